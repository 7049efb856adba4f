"""In-memory fakes of the release's I/O edges: a deployment target, the registry, and the HTTP the smoke test and
the production check send. No process, no socket: the whole promotion and rollback matrix runs in seconds.

Every mutating call (target, and registry when it shares the :class:`Steps`) goes through a scriptable crash:
``Steps(crash_at=k)`` raises :class:`Crash` (a BaseException, like kill -9: nothing in the release code catches it)
on the k-th one, before it takes effect. The state lives in a :class:`World` that survives the "process": a new
:class:`FakeTarget` over the same world is the next command's view of the same servers.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from deploy.targets.base import DeploymentError, DeploymentTarget, SlotStatus
from registry.versions import VersionNotFound

MODEL_NAME = "breast-cancer-classifier"
#: predictions a production router passes per scrape of one slot, split by weight (so a slot's share is its weight)
TRAFFIC_PER_SCRAPE = 1000
#: a dead pid (above any kernel's pid_max, 2**22): a journal entry with it reads as a process killed mid-way
DEAD_PID = 2**22 + 1
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)
PREDICT_ROUTE = "/v1/models/{name}:predict"
MUTATING = ("deploy", "set_weights", "rename", "stop", "reconcile", "hold_expiry", "stop_all")


class Crash(BaseException):  # noqa: N818  # kill -9 has no "Error" in its name either
    """The process died here (kill -9): nothing in the release code catches a BaseException."""


@dataclass
class Steps:
    """The mutating calls made so far, and the one (1-based) at which the process dies."""

    crash_at: int | None = None
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def step(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if self.crash_at is not None and len(self.calls) == self.crash_at:
            raise Crash(f"killed at mutating call {self.crash_at}: {name}{args}")


# ----- the target ------------------------------------------------------------------------------------------------
@dataclass
class FakeSlot:
    """One model server: its record (the SlotRecord protocol) and what it has served so far."""

    version: str
    url: str
    model_name: str
    bundle_dir: str
    expires_at: float | None = None
    alive: bool = True  # False: its process died (reconcile restarts it)
    broken: bool = False  # runs but does not answer as itself (reconcile cannot fix that)
    ok: float = 0.0
    errors: float = 0.0
    rejected: float = 0.0  # answered 422 (a client error)
    classes: dict[str, float] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return 1000 + int(self.url.rsplit("-", 1)[-1].split(".")[0])


@dataclass
class World:
    """What runs where, outliving any one command: environments -> slots, weights, the expiry hold, and how each
    version behaves under traffic ("healthy", "errors", "silent": no predictions, "no-metrics", "divergent",
    "rejects": every request answered 422, as a changed input contract answers today's clients)."""

    slots: dict[str, dict[str, FakeSlot]] = field(default_factory=dict)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    hold: str | None = None
    holds: list[str | None] = field(default_factory=list)  # every hold_expiry reason, in order
    behaviour: dict[str, str] = field(default_factory=dict)
    fail_deploy: set[str] = field(default_factory=set)  # versions whose server never becomes ready
    servers: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    images: dict[str, str | None] = field(default_factory=dict)  # version -> the image it was last deployed with

    def env(self, environment: str) -> dict[str, FakeSlot]:
        return self.slots.setdefault(str(environment), {})

    def weights_of(self, environment: str) -> dict[str, float]:
        return self.weights.setdefault(str(environment), {})

    def by_url(self, url: str) -> FakeSlot | None:
        """The running server behind a slot URL (renames keep the URL: same process)."""
        return next((s for env in self.slots.values() for s in env.values() if url.startswith(s.url)), None)

    def serving(self, environment: str) -> FakeSlot | None:
        """The slot with most of the environment's traffic (what a request through its entry reaches)."""
        weights = self.weights_of(environment)
        if not weights:
            return None
        return self.env(environment).get(max(weights, key=lambda k: weights[k]))

    def snapshot(self) -> dict[str, Any]:
        """Versions and weights, comparable between two moments."""
        return {
            "slots": {e: {k: s.version for k, s in sl.items()} for e, sl in self.slots.items() if sl},
            "weights": {e: dict(w) for e, w in self.weights.items() if w},
        }


class FakeTarget(DeploymentTarget):
    """An in-memory :class:`DeploymentTarget` with the local target's rules (no replacing a routed slot, weights
    add up to 100 on ready slots, renames keep the process and its traffic) and a scriptable crash."""

    name = "fake"

    def __init__(self, world: World | None = None, crash_at: int | None = None, steps: Steps | None = None) -> None:
        self.world = world if world is not None else World()
        self.steps = steps if steps is not None else Steps(crash_at)
        self.interrupt = None

    @property
    def calls(self) -> list[tuple[str, tuple[Any, ...]]]:
        return self.steps.calls

    def _step(self, name: str, *args: Any) -> None:
        self.steps.step(name, *args)

    def revived(self) -> FakeTarget:
        """The next command's target: the same servers and weights, no crash scripted."""
        return FakeTarget(self.world)

    # ----- mutating ----------------------------------------------------------------------------------------------
    def deploy(self, environment: str, slot: str, bundle_dir: Path, version: str, image: str | None = None) -> str:
        self._step("deploy", str(environment), str(slot), str(version))
        if self.runs_image and not image:  # as the local target's container runtime
            raise DeploymentError(f"version {version} has no serving image to run: `mlrelease build`")
        self.world.images[str(version)] = image
        env, weights = self.world.env(environment), self.world.weights_of(environment)
        if weights.get(slot, 0) > 0:
            raise DeploymentError(f"{environment}/{slot} still receives {weights[slot]}% of traffic")
        env.pop(slot, None)
        n = next(self.world.servers)
        url = f"http://{environment}-{slot}-{n}.fake.invalid"
        card = json.loads((Path(bundle_dir) / "model_card.json").read_text())
        env[slot] = FakeSlot(str(version), url, card["name"], str(Path(bundle_dir).resolve()))
        try:
            if self.interrupt is not None:  # once, as a ready wait checks it before its first probe
                self.interrupt()
            if version in self.world.fail_deploy:
                raise DeploymentError(f"{environment}/{slot} (version {version}) did not become ready")
        except BaseException:  # as the local target: a server that never became ready is stopped and forgotten
            env.pop(slot, None)
            raise
        return url

    def set_weights(self, environment: str, weights: Mapping[str, float]) -> None:
        self._step("set_weights", str(environment), {str(k): v for k, v in weights.items()})
        routed = {str(k): float(v) for k, v in weights.items() if v > 0}
        if abs(sum(routed.values()) - 100.0) > 1e-6:
            raise DeploymentError(f"weights {dict(weights)} for {environment} must add up to 100")
        for name in routed:
            problem = self.slot_problem(environment, name)
            if problem is not None:
                raise DeploymentError(f"{environment}/{name} is not ready to take traffic: {problem}")
        self.world.weights[str(environment)] = routed

    def rename(self, environment: str, source: str, dest: str, expires_at: float | None = None) -> None:
        self._step("rename", str(environment), str(source), str(dest))
        env, weights = self.world.env(environment), self.world.weights_of(environment)
        if source not in env:
            raise DeploymentError(f"{environment}/{source} is empty; nothing to move to {dest}")
        if dest in env and weights.get(dest, 0) > 0:
            raise DeploymentError(f"{environment}/{dest} still receives traffic; cannot replace it")
        env[dest] = replace(env.pop(source), expires_at=expires_at)
        moved = weights.pop(source, None)
        weights.pop(dest, None)
        if moved:
            weights[dest] = moved

    def stop(self, environment: str, slot: str, wait: bool = True) -> None:
        self._step("stop", str(environment), str(slot))
        env, weights = self.world.env(environment), self.world.weights_of(environment)
        if slot not in env:
            return
        if weights.get(slot, 0) > 0:
            raise DeploymentError(f"{environment}/{slot} still receives {weights[slot]}% of traffic")
        del env[slot]

    def reconcile(self) -> list[str]:
        self._step("reconcile")
        done = []
        for env_name, env in self.world.slots.items():
            for name, slot in list(env.items()):
                weight = self.world.weights_of(env_name).get(name, 0)
                if slot.expires_at and slot.expires_at < time.time() and weight == 0 and self.world.hold is None:
                    del env[name]
                    done.append(f"stopped expired {env_name}/{name} (version {slot.version})")
                elif not slot.alive:
                    slot.alive = True
                    done.append(f"restarted {env_name}/{name} (version {slot.version})")
        return done

    def hold_expiry(self, reason: str | None) -> None:
        self._step("hold_expiry", reason)
        self.world.hold = reason
        self.world.holds.append(reason)

    def stop_all(self) -> None:
        self._step("stop_all")
        self.world.slots.clear()
        self.world.weights.clear()

    # ----- reading -----------------------------------------------------------------------------------------------
    def status(self) -> list[SlotStatus]:
        return [
            SlotStatus(e, k, s.version, s.url, s.pid, self.world.weights_of(e).get(k, 0.0), s.alive and not s.broken)
            for e, env in sorted(self.world.slots.items())
            for k, s in sorted(env.items())
        ]

    def slot(self, environment: str, slot: str) -> FakeSlot | None:
        return self.world.env(environment).get(str(slot))

    def slot_url(self, environment: str, slot: str) -> str | None:
        found = self.slot(environment, slot)
        return None if found is None else found.url

    def slot_version(self, environment: str, slot: str) -> str | None:
        found = self.slot(environment, slot)
        return None if found is None else found.version

    def slot_problem(self, environment: str, slot: str) -> str | None:
        found = self.slot(environment, slot)
        if found is None:
            return f"{environment}/{slot} is empty"
        if not found.alive:
            return f"{environment}/{slot}: process gone"
        if found.broken:
            return f"{environment}/{slot} does not answer as version {found.version}"
        return None

    def entry_url(self, environment: str) -> str | None:
        return f"http://{environment}.router.fake.invalid" if self.world.env(environment) else None

    def weights(self, environment: str) -> dict[str, float]:
        return dict(self.world.weights_of(environment))

    def slot_metrics(self, environment: str, slot: str) -> str:
        found = self.slot(environment, slot)
        if found is None:
            raise DeploymentError(f"{environment}/{slot} is empty: no metrics to read")
        behaviour = self.world.behaviour.get(found.version, "healthy")
        if not found.alive:
            raise DeploymentError(f"no connection to {found.url}")
        if behaviour == "no-metrics":
            raise DeploymentError(f"HTTP 503 from {found.url}/metrics")
        served = TRAFFIC_PER_SCRAPE * self.world.weights_of(environment).get(slot, 0.0) / 100.0
        if behaviour != "silent":
            failed = served if behaviour == "errors" else 0.0
            rejected = served if behaviour == "rejects" else 0.0
            found.ok += served - failed - rejected
            found.errors += failed
            found.rejected += rejected
            predicted = served - failed - rejected
            shares = {"malignant": 1.0} if behaviour == "divergent" else {"benign": 2 / 3, "malignant": 1 / 3}
            for cls, share in shares.items():
                found.classes[cls] = found.classes.get(cls, 0.0) + predicted * share
        return metrics_page(found.ok, found.errors, found.classes, found.version, rejected=found.rejected)

    def hold_reason(self) -> str | None:
        return self.world.hold

    def describe(self) -> str:
        return "fake in-memory target (tests/fakes.py)"


class _Page(Collector):
    def __init__(
        self, ok: float, errors: float, classes: dict[str, float], version: str, seconds: float, rejected: float = 0.0
    ) -> None:
        self.ok, self.errors, self.classes, self.version, self.seconds = ok, errors, classes, version, seconds
        self.rejected = rejected

    def collect(self) -> Iterable[Any]:
        requests = CounterMetricFamily("mlrelease_requests", "r", labels=["route", "status"])
        requests.add_metric([PREDICT_ROUTE, "200"], self.ok)
        requests.add_metric([PREDICT_ROUTE, "500"], self.errors)
        if self.rejected:
            requests.add_metric([PREDICT_ROUTE, "422"], self.rejected)
        requests.add_metric(["/ready", "200"], 1000.0)  # not a prediction route: ignored by the analysis
        yield requests
        total = self.ok + self.errors + self.rejected
        buckets = [(str(le), total if self.seconds <= le else 0.0) for le in BUCKETS] + [("+Inf", total)]
        duration = HistogramMetricFamily("mlrelease_request_duration_seconds", "d", labels=["route"])
        duration.add_metric([PREDICT_ROUTE], buckets, sum_value=total * self.seconds)
        yield duration
        preds = CounterMetricFamily("mlrelease_predictions", "p", labels=["model_version", "class"])
        for cls, n in sorted(self.classes.items()):
            preds.add_metric([self.version, cls], n)
        yield preds


def metrics_page(
    ok: float,
    errors: float,
    classes: dict[str, float],
    version: str = "1",
    seconds: float = 0.003,
    rejected: float = 0.0,
) -> str:
    """A server's cumulative /metrics page with the serving contract's metric names, made by prometheus_client."""
    reg = CollectorRegistry()
    reg.register(_Page(ok, errors, classes, version, seconds, rejected))
    return generate_latest(reg).decode()


# ----- HTTP (the smoke test and the production check) ------------------------------------------------------------
@dataclass
class FakeResponse:
    status_code: int
    payload: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return self.payload

    @property
    def text(self) -> str:
        return json.dumps(self.payload)


class FakeHttp:
    """``httpx.get``/``httpx.post`` and the core probe, answered by the servers of a :class:`World`: /ready, and
    predictions answered by the slot a URL names (or, through an entry URL, the slot with most of the traffic). A
    broken or dead server answers 503/500."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.requests: list[tuple[str, str]] = []

    def _server(self, url: str) -> FakeSlot | None:
        host = urlsplit(url).hostname or ""
        if host.endswith(".router.fake.invalid"):
            return self.world.serving(host.split(".", 1)[0])
        return self.world.by_url(url)

    def get(self, url: str, **_: Any) -> FakeResponse:
        import httpx

        self.requests.append(("GET", url))
        server = self._server(url)
        if server is None or not server.alive:
            raise httpx.ConnectError(f"connection refused: {url}")
        return FakeResponse(503 if server.broken else 200, {"ready": not server.broken})

    def probe(self, url: str, timeout: float = 1.0) -> tuple[int, str]:
        """``mlrelease.core.http.probe`` against the fake servers: (0, reason) when nothing answers."""
        self.requests.append(("GET", url))
        server = self._server(url)
        if server is None or not server.alive:
            return 0, f"connection refused: {url}"
        return (503 if server.broken else 200), json.dumps({"ready": not server.broken})

    def post(self, url: str, json: dict[str, Any] | None = None, **_: Any) -> FakeResponse:  # noqa: A002
        import httpx

        self.requests.append(("POST", url))
        server = self._server(url)
        if server is None or not server.alive:
            raise httpx.ConnectError(f"connection refused: {url}")
        if server.broken or self.world.behaviour.get(server.version) == "errors":
            return FakeResponse(500, {"detail": "internal error"})
        if self.world.behaviour.get(server.version) == "rejects":
            return FakeResponse(422, {"error": "wrong feature count", "code": "wrong_feature_count", "status": 422})
        rows = len((json or {}).get("instances", []))
        preds = [{"class": "benign", "probabilities": [0.25, 0.75]}] * rows
        return FakeResponse(200, {"predictions": preds, "model_version": server.version})


# ----- the registry ----------------------------------------------------------------------------------------------
class FakeClient:
    """The MlflowClient calls the audit trail makes (version tags), into the fake registry's tags."""

    def __init__(self, registry: FakeRegistry) -> None:
        self.registry = registry
        self.tag_calls: list[tuple[str, str, str, str]] = []

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.registry.reach()
        self.tag_calls.append((name, str(version), key, value))
        self.registry.versions.setdefault(str(version), {})[key] = value


class RegistryDown(Exception):  # noqa: N818  # named as the incident is
    """What the MLflow client raises when its server does not answer. The release code tells registry errors by
    their module (:func:`registry.client.is_registry_error`), so this fake one claims MLflow's."""

    __module__ = "mlflow.exceptions"


class FakeRegistry:
    """:class:`registry.versions.Registry` in memory: registered versions with their tags, aliases, bundles.

    Its mutations (set_alias, delete_alias, set_tag) are crash points too when it is given the target's Steps.
    While ``down`` is set, every call (the audit trail's version tags included) raises :class:`RegistryDown`."""

    def __init__(self, bundle: Path, versions: Iterable[str] = ("1", "2", "3"), model_name: str = MODEL_NAME) -> None:
        self.model_name = model_name
        self.bundle_dir = Path(bundle)
        self.versions: dict[str, dict[str, str]] = {str(v): {} for v in versions}
        self.aliases: dict[str, str] = {}
        self.client = FakeClient(self)
        self.steps: Steps | None = None
        self.tampered: set[str] = set()
        self.down = False

    def reach(self) -> None:
        """Raise as the MLflow client does when the registry does not answer (``down``)."""
        if self.down:
            raise RegistryDown("API request to the registry failed: connection refused (the fake registry is down)")

    def _step(self, name: str, *args: Any) -> None:
        self.reach()
        if self.steps is not None:
            self.steps.step(name, *args)

    def alias(self, alias: str) -> str | None:
        self.reach()
        return self.aliases.get(str(alias))

    def set_alias(self, alias: str, version: str) -> None:
        self._step("set_alias", str(alias), str(version))
        self.aliases[str(alias)] = str(version)

    def delete_alias(self, alias: str, only: str | None = None) -> str | None:
        version = self.alias(alias)
        if version is not None and only in (None, version):
            self._step("delete_alias", str(alias), version)
            del self.aliases[str(alias)]
        return version

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.versions[self.require_registered(version)])

    def require_registered(self, version: str) -> str:
        self.reach()
        if str(version) not in self.versions:
            known = ", ".join(sorted(self.versions, key=int)) or "none"
            raise VersionNotFound(
                f"version {version!r} of {self.model_name} is not registered (registered versions: {known}); "
                "nothing was changed"
            )
        return str(version)

    def set_tag(self, version: str, key: str, value: str) -> None:
        self._step("set_tag", str(version), key, value)
        self.versions[self.require_registered(version)][key] = value

    def bundle(self, version: str, root: Path) -> Path:
        from mlrelease.core.modelcard import IntegrityError

        self.require_registered(version)
        if str(version) in self.tampered:
            raise IntegrityError(f"model.pt of version {version} does not match the registry's sha256")
        return self.bundle_dir


# ----- a bundle and a promoter -----------------------------------------------------------------------------------
def make_fake_bundle(dest: Path, name: str = MODEL_NAME) -> Path:
    """A bundle folder for the release code's readers (card, reference statistics) without training: model.pt is
    placeholder bytes (nothing loads it: the fake target runs no server)."""
    import numpy as np

    from mlrelease.core.modelcard import MODEL_FILE, ModelCard, Standardization, sha256_file
    from tests.serving_helpers import write_reference

    rng = np.random.default_rng(0)
    names = [f"feature_{i}" for i in range(4)]
    x = rng.normal(size=(200, len(names))).astype(np.float32)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MODEL_FILE).write_bytes(b"placeholder: the fake target loads nothing")
    ModelCard(
        name=name,
        feature_names=names,
        input_shape=[-1, len(names)],
        classes=["malignant", "benign"],
        preprocessing=Standardization(mean=[0.0] * len(names), scale=[1.0] * len(names)),
        sha256=sha256_file(dest / MODEL_FILE),
        torch_version="fake",
    ).write(dest)
    write_reference(dest, x, names)
    return dest


def fast_params(**overrides: Any) -> tuple[Any, Any]:
    """(CanaryParams, PromotionParams) for tests: two tiny canary steps, no driven load, no Locust gate, short waits.
    Keys of either model may be overridden."""
    from mlrelease.core.params import CanaryParams, PromotionParams

    canary_keys, promotion_keys = set(CanaryParams.model_fields), set(PromotionParams.model_fields)
    canary = CanaryParams.model_validate(
        {"steps": [10.0, 50.0], "interval": 0.01, "drive_load": False, "min_requests": 20}
        | {k: v for k, v in overrides.items() if k in canary_keys}
    )
    promotion = PromotionParams.model_validate(
        {"load_gate": False, "rollback_lock_wait": 0.2, "ready_timeout": 0.2, "drain_timeout": 0.1, "smoke_rows": 4}
        | {k: v for k, v in overrides.items() if k in promotion_keys}
    )
    unknown = set(overrides) - canary_keys - promotion_keys
    if unknown:
        raise TypeError(f"unknown params {sorted(unknown)}")
    return canary, promotion


def make_promoter(tmp_path: Path, target: DeploymentTarget, registry: Any, **params: Any) -> Any:
    """A :class:`release.promoter.Promoter` over ``target`` and ``registry`` with its state in ``tmp_path`` and
    fast params (``params``: CanaryParams/PromotionParams fields to override)."""
    from mlrelease.core.settings import Settings
    from release.promoter import Promoter

    canary, promotion = fast_params(**params)
    return Promoter(
        settings=Settings(home=tmp_path),
        model_name=getattr(registry, "model_name", MODEL_NAME),
        canary_params=canary,
        params=promotion,
        target=target,
        registry=registry,
        by="tester@example.org",
        reports_dir=tmp_path / "reports",
    )


def before_locking(monkeypatch: Any, module: Any, meanwhile: Callable[[], None]) -> None:
    """Run ``meanwhile`` once, the first time code in ``module`` asks for the promotion lock: what another command
    does while this one waits for it (``module`` is where the caller looks the lock up, e.g. release.session)."""
    real = module.promotion_lock
    pending = [meanwhile]

    @contextlib.contextmanager
    def lock(*args: Any, **kwargs: Any) -> Iterator[None]:
        if pending:
            pending.pop()()
        with real(*args, **kwargs):
            yield

    monkeypatch.setattr(module, "promotion_lock", lock)


# ----- the serving image's tags (mlrelease build / scan) -----------------------------------------------------------
class ImageTarget(FakeTarget):
    """A fake target whose slots run the serving image (a container runtime): ``require_scanned_image: auto`` is
    on against it."""

    name = "fake-image"
    runs_image = True


def digest_of(version: str) -> str:
    """A made-up image digest for ``version`` (sha256: and 64 hex digits, distinct per version)."""
    import hashlib

    return "sha256:" + hashlib.sha256(f"image of version {version}".encode()).hexdigest()


def tag_image(registry: FakeRegistry, version: str, scan: str | None = "passed", scanned: str | None = None) -> str:
    """Tag ``version`` as `mlrelease build` and `mlrelease scan` do: its image, and the scan's verdict (``scan``
    None: never scanned) of ``scanned`` (default: that very image's digest). Returns the image's digest."""
    from registry.image import IMAGE_DIGEST_TAG, IMAGE_REF_TAG, scan_tags

    digest = digest_of(version)
    tags = registry.versions[str(version)]
    tags.update({IMAGE_REF_TAG: f"localhost/{MODEL_NAME}:{version}-0123abcd", IMAGE_DIGEST_TAG: digest})
    if scan is not None:
        tags.update(scan_tags(scanned or digest, scan == "passed"))
    return digest
