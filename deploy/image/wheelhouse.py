"""The wheelhouse the image installs from with no network: the project wheel plus the pinned serving closure.

Versions are the ones installed in the host environment that passed the gates (``mlrelease[serving]`` and torch),
so what was tested is what ships; that environment is installed from the lock (``requirements/constraints.txt``,
written by ``make lock``), and a pin that is not the lock's version stops the build. Downloaded wheels are cached
per machine; the project wheel is reproducible (SOURCE_DATE_EPOCH), so an unchanged tree gives byte-identical
inputs and the image build reuses its cache.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename

log = logging.getLogger(__name__)

PROJECT = "mlrelease"
SERVING_EXTRA = "serving"
ALWAYS = ("torch",)
REPRODUCIBLE_EPOCH = "315532800"  # 1980-01-01, the earliest zip timestamp
LOCK_FILE = Path("requirements") / "constraints.txt"  # under the project root


class WheelhouseError(RuntimeError):
    """A serving dependency is not installed on the host, or a wheel could not be fetched or built."""


def _marker_ok(req: Requirement, extra: str | None) -> bool:
    if req.marker is None:
        return True
    env: dict[str, str] = {key: str(value) for key, value in default_environment().items()}
    env["extra"] = extra or ""
    return bool(req.marker.evaluate(env))


def extra_requirements(project: str = PROJECT, extra: str = SERVING_EXTRA) -> list[Requirement]:
    """The project's requirements that belong to one extra (e.g. ``mlrelease[serving]``)."""
    reqs = [Requirement(text) for text in metadata.requires(project) or []]
    return [r for r in reqs if r.marker is not None and _marker_ok(r, extra) and not _marker_ok(r, None)]


def pinned_closure(roots: list[Requirement]) -> dict[str, str]:
    """Every distribution the roots need, pinned to the version installed here: {canonical name: version}."""
    pins: dict[str, str] = {}
    queue = list(roots)
    seen: set[tuple[str, str]] = set()
    while queue:
        req = queue.pop()
        name = canonicalize_name(req.name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError as exc:
            raise WheelhouseError(
                f"{req.name} (needed by the serving image) is not installed here; run `make setup` first"
            ) from exc
        pins[name] = dist.version
        for extra in [None, *sorted(req.extras)]:
            if (name, extra or "") in seen:
                continue
            seen.add((name, extra or ""))
            for text in dist.requires or []:
                child = Requirement(text)
                if _marker_ok(child, extra):
                    queue.append(child)
    return pins


def serving_pins(exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Pins for ``mlrelease[serving]`` plus torch (and pip, used once to install), without the project itself
    and without ``exclude`` (e.g. torch's compiler-only dependencies, which inference never imports)."""
    roots = extra_requirements() + [Requirement(name) for name in ALWAYS]
    pins = pinned_closure(roots)
    for name in (PROJECT, *exclude):
        pins.pop(canonicalize_name(name), None)
    pins["pip"] = metadata.version("pip")
    return dict(sorted(pins.items()))


def read_lock(path: Path) -> dict[str, SpecifierSet]:
    """The pins of a constraints file (``name==version`` lines, comments and options skipped): {canonical name:
    specifier}."""
    pins: dict[str, SpecifierSet] = {}
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text and not text.startswith("-"):
            req = Requirement(text)
            pins[canonicalize_name(req.name)] = req.specifier
    return pins


def check_locked(pins: dict[str, str], lock: dict[str, SpecifierSet], lock_name: str = str(LOCK_FILE)) -> None:
    """Refuse pins that are not the lock's versions, with pip's meaning of a pin: ``torch==2.13.0`` in the lock
    holds the installed ``2.13.0+cpu``."""
    problems = []
    for name, version in pins.items():
        if name not in lock:
            problems.append(f"{name} {version} is not in the lock")
        elif not lock[name].contains(version, prereleases=True):
            problems.append(f"{name} {version} is installed, the lock has {lock[name]}")
    if problems:
        raise WheelhouseError(
            f"the serving closure installed here is not the one {lock_name} pins: {'; '.join(problems)}. "
            f"Reinstall from the lock (.venv/bin/pip install -c {lock_name} -e '.[serving,release,dev]'), "
            "or run `make lock` if pyproject.toml changed"
        )


def _cached_wheel(cache: Path, name: str, version: str) -> Path | None:
    for path in cache.glob("*.whl"):
        wheel_name, wheel_version, _build, _tags = parse_wheel_filename(path.name)
        if wheel_name == name and str(wheel_version) == version:
            return path
    return None


def _pip(*args: str, timeout: float = 900) -> None:
    argv = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "SOURCE_DATE_EPOCH": REPRODUCIBLE_EPOCH},
    )
    if proc.returncode != 0:
        raise WheelhouseError(f"`pip {' '.join(args[:3])} ...` failed: {proc.stderr.strip()[-2000:]}")


def fetch_wheels(pins: dict[str, str], cache: Path) -> list[Path]:
    """A wheel for every pin, from the per-machine cache, else downloaded (or built) into it once."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [f"{n}=={v}" for n, v in pins.items() if _cached_wheel(cache, n, v) is None]
    if missing:
        log.info("wheelhouse: fetching %s", ", ".join(missing))
        try:
            _pip("download", "--no-deps", "--only-binary=:all:", "-d", str(cache), *missing)
        except WheelhouseError:
            for spec in missing:  # one at a time, building the few that ship no wheel
                try:
                    _pip("download", "--no-deps", "--only-binary=:all:", "-d", str(cache), spec)
                except WheelhouseError:
                    _pip("wheel", "--no-deps", "-w", str(cache), spec)
    wheels = []
    for name, version in pins.items():
        found = _cached_wheel(cache, name, version)
        if found is None:
            raise WheelhouseError(f"no wheel for {name}=={version} after download; check the package index")
        wheels.append(found)
    return wheels


def build_project_wheel(project_root: Path, dest: Path) -> Path:
    """Build the project's own wheel reproducibly (fixed timestamps) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob(f"{PROJECT}-*.whl"):
        old.unlink()
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), str(project_root))
    built = sorted(dest.glob(f"{PROJECT}-*.whl"))
    if not built:
        raise WheelhouseError(f"pip wheel made no {PROJECT} wheel from {project_root}")
    return built[0]


def make_wheelhouse(project_root: Path, dest: Path, cache: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Fill ``dest`` with the serving wheels and requirements.txt; return the pins it holds."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = serving_pins(exclude)
    lock = project_root / LOCK_FILE
    if lock.is_file():
        check_locked(pins, read_lock(lock), str(LOCK_FILE))
    else:
        log.warning("wheelhouse: no %s in %s: the serving pins are not checked against a lock", LOCK_FILE, project_root)
    wanted = {path.name for path in fetch_wheels(pins, cache)}
    for old in dest.glob("*.whl"):
        if old.name not in wanted and not old.name.startswith(f"{PROJECT}-"):
            old.unlink()
    for path in fetch_wheels(pins, cache):
        target = dest / path.name
        if not target.exists():
            shutil.copy2(path, target)
    lines = [f"{name}=={version}" for name, version in pins.items() if name != "pip"]
    (dest / "requirements.txt").write_text("\n".join(lines) + "\n")
    build_project_wheel(project_root, dest)
    return pins
