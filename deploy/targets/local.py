"""The local deployment target (embedded default): server processes on loopback ports behind nginx.

Each slot is a ``python -m deploy.serving`` process started in its own session (it outlives the command that
started it, so a crashed promotion never takes traffic down). Routed environments get an nginx of their own, run
as the current user with its prefix, pid and temp paths under the state folder; weights are applied by rendering
the config from the state file and sending a graceful reload (SIGHUP), then waiting for the new generation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from deploy.targets.base import DeploymentError, DeploymentTarget, SlotStatus
from deploy.targets.process import REPO_ROOT, spawn_detached
from deploy.targets.state import DeployState, Slot, StateStore, atomic_write
from mlrelease.core.modelcard import IntegrityError, ModelCard, verify_bundle
from mlrelease.core.net import free_port

log = logging.getLogger(__name__)

# A slot serves the bundle on its command line: a model source in the operator's environment (a documented
# serving setting) would make every slot refuse to start ("set either model_dir or model_uri, not both").
SLOT_DROPPED = ("MLRELEASE_MODEL_URI", "MLRELEASE_MODEL_DIR")
# Staging exists for the release gates, whose load test comes from one client (127.0.0.1): a per-client rate
# limit meant for production would turn the gate's own load into 429s, reported as an error-rate breach.
STAGING_ENV = "staging"
STAGING_OVERRIDES = {"MLRELEASE_RATE_LIMIT_PER_SECOND": "0"}

TEMPLATE = REPO_ROOT / "deploy" / "nginx" / "nginx.conf.tmpl"
NGINX_BIN = "/usr/sbin/nginx"
SERVER_MARKER = "deploy.serving"


def http_get(url: str, timeout: float = 1.0) -> tuple[int, str]:
    """Status and body of a GET on loopback; (0, reason) when nothing answers."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"{url}: the local target only talks to 127.0.0.1")
    try:  # the scheme and host are checked above: plain http to loopback only
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310  # nosec B310
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def pid_alive(pid: int | None) -> bool:
    """True when the process exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def identity_problem(slot: Slot, timeout: float = 1.0) -> tuple[int, str | None]:
    """(HTTP status of /ready, None) when the slot's port is ready and serves the slot's version and bundle;
    otherwise the status and what is wrong. Another process that took the port answers, but not as this slot."""
    status, body = http_get(f"{slot.url}/ready", timeout=timeout)
    if status != 200:
        return status, f"{slot.url}/ready answered {status or body}"
    try:
        ready = json.loads(body)
        expected = ModelCard.read(Path(slot.bundle_dir)).sha256
    except (OSError, ValueError) as exc:
        return status, f"cannot check who serves {slot.url}: {exc}"
    if str(ready.get("model_version")) != slot.version or ready.get("sha256") != expected:
        return status, (
            f"{slot.url} is served by version {ready.get('model_version')!r} (sha256 "
            f"{str(ready.get('sha256'))[:12]}), not by version {slot.version} of {slot.bundle_dir}"
        )
    return status, None


def is_our_server(pid: int, port: int) -> bool:
    """Guard against pid reuse: the process must be a serving process on the slot's port."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode("utf-8", "replace") for a in cmdline]
    return SERVER_MARKER in args and str(port) in args


class LocalTarget(DeploymentTarget):
    """Supervised server processes on 127.0.0.1 and one nginx per routed environment."""

    name = "local"

    def __init__(
        self,
        state_dir: Path,
        *,
        routed: tuple[str, ...] = ("production",),
        ready_timeout_s: float = 90.0,
        drain_timeout_s: float = 15.0,
        entry_ports: Mapping[str, int] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.store = StateStore(self.state_dir)
        self.routed = routed
        self.ready_timeout_s = ready_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.entry_ports = dict(entry_ports or {})

    # ----- processes -------------------------------------------------------------------------------------------
    def deploy(self, environment: str, slot: str, bundle_dir: Path, version: str) -> str:
        """Verify the bundle, start a server for it in ``slot`` (replacing nothing that routes), wait for /ready."""
        card = verify_bundle(Path(bundle_dir))
        state = self.store.load()
        env = state.env(environment)
        if slot in env.slots and env.weight(slot) > 0:
            raise DeploymentError(
                f"{environment}/{slot} still receives {env.weight(slot)}% of traffic; route it away before replacing it"
            )
        if slot in env.slots:
            self._stop_slot(env.slots.pop(slot))
        port = free_port()
        process = self._spawn(environment, slot, Path(bundle_dir), version, port)
        env.slots[slot] = Slot(
            version=version,
            port=port,
            pid=process.pid,
            model_name=card.name,
            bundle_dir=str(Path(bundle_dir).resolve()),
        )
        self.store.save(state)  # record the pid at once: a crash from here on leaves no orphan untracked
        try:
            self._wait_ready(env.slots[slot], process)
        except BaseException:  # not ready in time, or the wait interrupted: a server that never became ready
            self._forget(environment, slot)  # is stopped and dropped
            raise
        return env.slots[slot].url

    def _forget(self, environment: str, slot: str) -> None:
        """Stop a slot's server and remove it from the state, so later commands do not try to revive it."""
        state = self.store.load()
        dropped = state.env(environment).slots.pop(slot, None)
        if dropped is not None:
            self._stop_slot(dropped, wait=False)
            self.store.save(state)

    def _spawn(self, environment: str, slot: str, bundle_dir: Path, version: str, port: int) -> subprocess.Popen[bytes]:
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{environment}-{slot}-v{version}-{port}.log"
        cmd = [
            sys.executable,
            "-m",
            SERVER_MARKER,
            "--model-dir",
            str(bundle_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model-version",
            str(version),
        ]
        log.info("starting %s/%s version %s on port %d (log %s)", environment, slot, version, port, log_path)
        extra = {"MLRELEASE_MODEL_VERSION": str(version)}
        if environment == STAGING_ENV:
            extra.update(STAGING_OVERRIDES)
        return spawn_detached(cmd, log_path, extra, dropped=SLOT_DROPPED)

    def _wait_ready(self, slot: Slot, process: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.interrupt is not None:
                self.interrupt()
            status, problem = identity_problem(slot)
            if problem is None:
                return
            if status == 200:
                raise DeploymentError(f"{problem}; another server holds the port: see {self._log_hint(slot)}")
            if (process is not None and process.poll() is not None) or not pid_alive(slot.pid):
                raise DeploymentError(
                    f"server for version {slot.version} exited before it was ready; see {self._log_hint(slot)}"
                )
            time.sleep(0.05)
        raise DeploymentError(
            f"server for version {slot.version} not ready after {self.ready_timeout_s:g} s "
            f"on {slot.url}/ready; see {self._log_hint(slot)}"
        )

    def starting(self, environment: str, slot: str) -> bool:
        """Its server runs, was started within the ready timeout and does not answer /ready yet (or answers 503:
        still loading). A server that answers otherwise, or for longer, is not starting: it is broken."""
        found = self.store.load().env(environment).slots.get(slot)
        if found is None or time.time() - found.started_at > self.ready_timeout_s:
            return False
        if not pid_alive(found.pid) or not is_our_server(found.pid, found.port):
            return False
        return identity_problem(found)[0] in (0, 503)

    def _log_hint(self, slot: Slot) -> str:
        return str(self.state_dir / "logs" / f"*-v{slot.version}-{slot.port}.log")

    def _stop_slot(self, slot: Slot, wait: bool = True) -> None:
        """SIGTERM (the server drains), then SIGKILL after the drain timeout."""
        if not pid_alive(slot.pid) or not is_our_server(slot.pid, slot.port):
            return
        log.info("stopping version %s (pid %d, port %d)", slot.version, slot.pid, slot.port)
        os.kill(slot.pid, signal.SIGTERM)
        if not wait:
            return
        deadline = time.monotonic() + self.drain_timeout_s
        while time.monotonic() < deadline and pid_alive(slot.pid):
            _reap(slot.pid)
            time.sleep(0.05)
        if pid_alive(slot.pid):
            os.kill(slot.pid, signal.SIGKILL)
        _reap(slot.pid)

    def stop(self, environment: str, slot: str, wait: bool = True) -> None:
        """Stop a slot that gets no traffic; a missing slot is a no-op."""
        state = self.store.load()
        env = state.env(environment)
        if slot not in env.slots:
            return
        if env.weight(slot) > 0:
            raise DeploymentError(
                f"{environment}/{slot} still receives {env.weight(slot)}% of traffic; set its weight to 0 first"
            )
        found = env.slots[slot]
        if environment in self.routed:
            from deploy.targets import router

            # old nginx workers may still be finishing requests on this slot: let them, then stop it
            router.Nginx(self.state_dir / "nginx" / environment).wait_drained(self.drain_timeout_s)
        self._stop_slot(found, wait=wait)
        # forget it only once it was told to stop: a crash before this line leaves a tracked (dead) slot, never
        # an untracked running server
        state = self.store.load()
        if state.env(environment).slots.get(slot) == found:
            del state.env(environment).slots[slot]
            self.store.save(state)

    def rename(self, environment: str, source: str, dest: str, expires_at: float | None = None) -> None:
        """Relabel a slot; the destination must be empty or not routed (it is stopped)."""
        state = self.store.load()
        env = state.env(environment)
        if source not in env.slots:
            raise DeploymentError(f"{environment}/{source} is empty; nothing to move to {dest}")
        replaced = env.slots.get(dest)
        if replaced is not None and env.weight(dest) > 0:
            raise DeploymentError(f"{environment}/{dest} still receives traffic; cannot replace it")
        if replaced is not None and replaced.pid != env.slots[source].pid:
            self._stop_slot(replaced)  # before it leaves the state: a crash never leaves an untracked server
        env.slots[dest] = env.slots.pop(source).model_copy(update={"expires_at": expires_at})
        moved = env.weights.pop(source, None)
        env.weights.pop(dest, None)
        if moved:
            env.weights[dest] = moved
        self.store.save(state)
        if expires_at is not None:
            self._watch_expiry(environment, dest, env.slots[dest].pid)

    def _watch_expiry(self, environment: str, slot: str, pid: int) -> None:
        """Start the detached watcher that stops the slot when its window ends (a failure only loses the timer:
        the next command's reconcile stops an expired slot too)."""
        from deploy.targets.expiry import start_watch

        try:
            start_watch(self.state_dir, environment, slot, pid)
        except OSError as exc:
            log.warning(
                "could not start the expiry watcher of %s/%s: %s; the next command stops it once expired",
                environment,
                slot,
                exc,
            )

    # ----- traffic ---------------------------------------------------------------------------------------------
    def set_weights(self, environment: str, weights: Mapping[str, float]) -> None:
        """Check every slot that gets traffic is ready, then write state, render nginx and reload gracefully."""
        state = self.store.load()
        env = state.env(environment)
        routed = {k: float(v) for k, v in weights.items() if v > 0}
        if abs(sum(routed.values()) - 100.0) > 1e-6:
            raise DeploymentError(f"weights {dict(weights)} for {environment} must add up to 100")
        for name in routed:
            slot = env.slots.get(name)
            if slot is None:
                raise DeploymentError(f"{environment}/{name} is empty; deploy a version there first")
            problem = identity_problem(slot)[1]
            if problem is not None:
                raise DeploymentError(
                    f"{environment}/{name} (version {slot.version}) is not ready to take "
                    f"traffic: {problem}; no traffic was moved"
                )
        env.weights = routed
        self.store.save(state)
        if environment in self.routed:
            self.apply_routing(state, environment)

    def apply_routing(self, state: DeployState, environment: str) -> None:
        """Render the router config from the state and start or gracefully reload nginx; wait for it to apply."""
        from deploy.targets import router

        env = state.env(environment)
        if env.entry_port is None:
            env.entry_port = self.entry_ports.get(environment) or free_port()
            self.store.save(state)
        router.Nginx(self.state_dir / "nginx" / environment).apply(env)

    def entry_url(self, environment: str) -> str | None:
        env = self.store.load().env(environment)
        if environment in self.routed:
            return None if env.entry_port is None else f"http://127.0.0.1:{env.entry_port}"
        slot = env.slots.get("stable")
        return None if slot is None else slot.url

    def weights(self, environment: str) -> dict[str, float]:
        return dict(self.store.load().env(environment).weights)

    def slot_url(self, environment: str, slot: str) -> str | None:
        found = self.store.load().env(environment).slots.get(slot)
        return None if found is None else found.url

    def slot_version(self, environment: str, slot: str) -> str | None:
        found = self.store.load().env(environment).slots.get(slot)
        return None if found is None else found.version

    def slot(self, environment: str, slot: str) -> Slot | None:
        """The full slot record (port, pid, bundle), None when empty."""
        return self.store.load().env(environment).slots.get(slot)

    def slot_problem(self, environment: str, slot: str) -> str | None:
        found = self.slot(environment, slot)
        return f"{environment}/{slot} is empty" if found is None else identity_problem(found)[1]

    # ----- supervision ----------------------------------------------------------------------------------------
    def status(self) -> list[SlotStatus]:
        rows: list[SlotStatus] = []
        state = self.store.load()
        for env_name, env in sorted(state.environments.items()):
            for slot_name, slot in sorted(env.slots.items()):
                alive = pid_alive(slot.pid)
                problem = identity_problem(slot, timeout=0.5)[1] if alive else "process gone"
                if alive and problem is not None:  # a busy server may be slow to answer: ask once more, longer
                    problem = identity_problem(slot, timeout=3.0)[1]
                detail = problem or ""
                if slot.expires_at and problem is None:
                    detail = f"warm until {time.strftime('%H:%M:%S', time.localtime(slot.expires_at))}"
                rows.append(
                    SlotStatus(
                        env_name,
                        slot_name,
                        slot.version,
                        slot.url,
                        slot.pid,
                        env.weight(slot_name),
                        problem is None,
                        detail,
                    )
                )
        return rows

    def reconcile(self) -> list[str]:
        """Restart dead slots, stop expired warm slots, make each router match the state; return what was done."""
        done: list[str] = []
        state = self.store.load()
        for env_name, env in state.environments.items():
            for slot_name, slot in list(env.slots.items()):
                if slot.expires_at and slot.expires_at < time.time() and env.weight(slot_name) == 0:
                    self.stop(env_name, slot_name)
                    done.append(f"stopped expired {env_name}/{slot_name} (version {slot.version})")
                elif not pid_alive(slot.pid):
                    try:
                        self._restart(env_name, slot_name, slot)
                        done.append(f"restarted {env_name}/{slot_name} (version {slot.version})")
                    except (DeploymentError, IntegrityError) as exc:
                        if env.weight(slot_name) > 0:
                            raise  # it serves traffic: say so loudly rather than route around it silently
                        self._forget(env_name, slot_name)
                        done.append(f"dropped dead {env_name}/{slot_name} (version {slot.version}): {exc}")
            if env_name in self.routed and env.weights:
                self.apply_routing(self.store.load(), env_name)
        return done

    def _restart(self, environment: str, slot_name: str, slot: Slot) -> None:
        """Start a dead slot again on its own port, from its (re-verified) bundle."""
        bundle = Path(slot.bundle_dir)
        verify_bundle(bundle)
        process = self._spawn(environment, slot_name, bundle, slot.version, slot.port)
        state = self.store.load()
        state.env(environment).slots[slot_name] = slot.model_copy(
            update={"pid": process.pid, "started_at": time.time()}
        )
        self.store.save(state)
        if slot.expires_at is not None:  # the old watcher followed the old pid and has ended; started before the
            self._watch_expiry(environment, slot_name, process.pid)  # wait, which a rollback may interrupt
        self._wait_ready(state.env(environment).slots[slot_name], process)

    def stop_all(self) -> None:
        """Stop every slot and every router (tests and `make clean`)."""
        from deploy.targets import router

        state = self.store.load()
        for env_name, env in state.environments.items():
            for slot in env.slots.values():
                self._stop_slot(slot, wait=False)
            router.Nginx(self.state_dir / "nginx" / env_name).stop()
        for env in state.environments.values():
            for slot in env.slots.values():
                self._stop_slot(slot)
            env.slots.clear()
            env.weights.clear()
        self.store.save(state)


def _reap(pid: int) -> None:
    """Collect a child's exit status so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


__all__ = ["LocalTarget", "atomic_write", "free_port", "http_get"]
