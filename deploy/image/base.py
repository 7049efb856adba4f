"""The Debian base image, bootstrapped with mmdebstrap where no image registry is reachable.

The root file system (Debian bookworm, Python 3.11, no apt caches, no docs) is built once per machine into a
cached tarball and imported as a local image; users with a registry pass ``python:3.11-slim@sha256:...`` instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

from deploy.engine import Engine, EngineError, image_exists

log = logging.getLogger(__name__)

SUITE = "bookworm"
PACKAGES = ("python3-minimal", "libpython3.11-stdlib", "libstdc++6", "tzdata")
DPKG_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
)
BASE_REPO = "localhost/mlrelease-base"


def cache_dir() -> Path:
    """Where machine-wide build caches live (MLRELEASE_CACHE_DIR, else ~/.cache/mlrelease)."""
    root = os.environ.get("MLRELEASE_CACHE_DIR") or str(Path.home() / ".cache" / "mlrelease")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def base_key(suite: str = SUITE, packages: tuple[str, ...] = PACKAGES) -> str:
    """A short hash of what goes into the base, so a change of package list makes a new base."""
    text = "|".join([suite, "essential", *packages, *DPKG_EXCLUDES])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def base_ref(suite: str = SUITE) -> str:
    """The local image name of the bootstrapped base."""
    return f"{BASE_REPO}:{suite}-py311-{base_key(suite)}"


def mmdebstrap_argv(tarball: Path, suite: str = SUITE) -> list[str]:
    """The mmdebstrap command line: essential packages plus Python, without docs and apt caches."""
    binary = shutil.which("mmdebstrap")
    if binary is None:
        raise EngineError(
            "mmdebstrap is not installed (Debian: apt-get install mmdebstrap; "
            "or pass --base-image python:3.11-slim when a registry is reachable)"
        )
    argv = [binary, "--variant=essential", f"--include={','.join(PACKAGES)}"]
    argv += [f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES]
    return [*argv, suite, str(tarball)]


def bootstrap_tarball(suite: str = SUITE, timeout: float = 900) -> Path:
    """The cached root file system tarball, made by mmdebstrap on first use (about a minute)."""
    tarball = cache_dir() / f"base-{suite}-{base_key(suite)}.tar"
    if tarball.is_file():
        return tarball
    partial = tarball.with_suffix(".partial.tar")
    log.info("bootstrapping the Debian %s base with mmdebstrap into %s", suite, tarball)
    proc = subprocess.run(mmdebstrap_argv(partial, suite), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise EngineError(f"mmdebstrap failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    partial.replace(tarball)
    return tarball


def import_base(engine: Engine, tarball: Path, ref: str) -> None:
    """Import a root file system tarball as a local image named ``ref``."""
    if not engine.is_buildah:
        engine.run("import", "--change", 'CMD ["python3"]', str(tarball), ref)
        return
    container = engine.run("from", "scratch").stdout.strip()
    try:
        engine.run("add", container, str(tarball), "/")
        engine.run("config", "--cmd", "python3", "--env", "LANG=C.UTF-8", container)
        engine.run("commit", "--format", "docker", container, ref)
    finally:
        engine.run("rm", container, check=False)


def ensure_base(engine: Engine, suite: str = SUITE) -> str:
    """The local base image reference, bootstrapping and importing it once per machine (locked)."""
    from filelock import FileLock

    ref = base_ref(suite)
    with FileLock(str(cache_dir() / "base.lock"), timeout=1800):
        if image_exists(engine, ref):
            return ref
        import_base(engine, bootstrap_tarball(suite), ref)
    return ref
