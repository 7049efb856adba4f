"""The local deployment target (embedded default): server processes on loopback ports behind nginx.

Each slot is a ``python -m deploy.serving`` process started in its own session (it outlives the command that
started it, so a crashed promotion never takes traffic down). Routed environments get an nginx of their own, run
as the current user with its prefix, pid and temp paths under the state folder; weights are applied by rendering
the config from the state file and sending a graceful reload (SIGHUP), then waiting for the new generation. A warm
slot given an expiry gets a detached watcher (:mod:`deploy.targets.local.expiry`) that stops it when its window
ends, unless expiry is on hold.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from deploy.targets.base import DeploymentError, DeploymentTarget, SlotStatus
from deploy.targets.local.processes import identity_problem, spawn_server, start_watch, stop_server
from deploy.targets.local.router import Nginx
from deploy.targets.local.state import DeployState, Environment, Slot, StateStore
from mlrelease.core.http import probe, wait_until
from mlrelease.core.modelcard import IntegrityError, verify_bundle
from mlrelease.core.net import free_port
from mlrelease.core.proc import is_our_server, pid_alive

log = logging.getLogger(__name__)

METRICS_TIMEOUT_S = 2.0


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
        self.logs = self.state_dir / "logs"
        self.routed = routed
        self.ready_timeout_s = ready_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.entry_ports = dict(entry_ports or {})

    def describe(self) -> str:
        return f"local (state in {self.state_dir}, logs in {self.logs})"

    def _router(self, environment: str) -> Nginx:
        return Nginx(self.state_dir / "nginx" / environment)

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
            stop_server(env.slots.pop(slot), self.drain_timeout_s)
        port = free_port()
        process = spawn_server(self.logs, environment, slot, Path(bundle_dir), version, port)
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
            stop_server(dropped, self.drain_timeout_s, wait=False)
            self.store.save(state)

    def _wait_ready(self, slot: Slot, process: subprocess.Popen[bytes] | None = None) -> None:
        """Wait until the slot answers /ready as itself; fail at once when its server exits or another answers."""

        def ready() -> bool:
            status, problem = identity_problem(slot)
            if problem is None:
                return True
            if status == 200:
                raise DeploymentError(f"{problem}; another server holds the port: see {self._log_hint(slot)}")
            if (process is not None and process.poll() is not None) or not pid_alive(slot.pid):
                raise DeploymentError(
                    f"server for version {slot.version} exited before it was ready; see {self._log_hint(slot)}"
                )
            return False

        if not wait_until(ready, self.ready_timeout_s, interval=0.05, interrupt=self.interrupt):
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
        return str(self.logs / f"*-v{slot.version}-{slot.port}.log")

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
            # old nginx workers may still be finishing requests on this slot: let them, then stop it
            self._router(environment).wait_drained(self.drain_timeout_s)
        stop_server(found, self.drain_timeout_s, wait=wait)
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
            stop_server(replaced, self.drain_timeout_s)  # before it leaves the state: never untracked
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
        try:
            start_watch(self.state_dir, environment, slot, pid)
        except OSError as exc:
            log.warning(
                "could not start the expiry watcher of %s/%s: %s; the next command stops it once expired",
                environment,
                slot,
                exc,
            )

    def hold_expiry(self, reason: str | None) -> None:
        """Record (or lift, with None) the hold that keeps every warm slot past its window; watchers obey it."""
        state = self.store.load()
        if state.expiry_hold != reason:
            state.expiry_hold = reason
            self.store.save(state)

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
        env = state.env(environment)
        if env.entry_port is None:
            env.entry_port = self.entry_ports.get(environment) or free_port()
            self.store.save(state)
        self._router(environment).apply(env)

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
        """The full slot record (port, pid, bundle, expiry), None when empty."""
        return self.store.load().env(environment).slots.get(slot)

    def slot_problem(self, environment: str, slot: str) -> str | None:
        found = self.slot(environment, slot)
        return f"{environment}/{slot} is empty" if found is None else identity_problem(found)[1]

    def slot_metrics(self, environment: str, slot: str) -> str:
        """GET the slot's own /metrics (2 s timeout); DeploymentError saying why when there is no readable page."""
        url = self.slot_url(environment, slot)
        if url is None:
            raise DeploymentError(f"{environment}/{slot} is empty: no metrics to read")
        code, body = probe(f"{url}/metrics", timeout=METRICS_TIMEOUT_S)
        if code == 0:
            raise DeploymentError(f"no connection to {url} ({body[:200]})")
        if code != 200:
            raise DeploymentError(f"HTTP {code} from {url}/metrics")
        return body

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
                weight = env.weight(slot_name)
                rows.append(
                    SlotStatus(env_name, slot_name, slot.version, slot.url, slot.pid, weight, problem is None, detail)
                )
        return rows

    def reconcile(self) -> list[str]:
        """Restart dead slots, stop expired warm slots (unless expiry is on hold), make each router match the
        state; return what was done."""
        done: list[str] = []
        state = self.store.load()
        for env_name, env in state.environments.items():
            for slot_name, slot in list(env.slots.items()):
                said = self._reconcile_slot(env_name, env, slot_name, slot, state.expiry_hold)
                if said is not None:
                    done.append(said)
            if env_name in self.routed and env.weights:
                self.apply_routing(self.store.load(), env_name)
        return done

    def _reconcile_slot(
        self, env_name: str, env: Environment, slot_name: str, slot: Slot, hold: str | None
    ) -> str | None:
        """Stop the slot if its window is over (and expiry not held), restart it if its server died; say what."""
        if slot.expires_at and slot.expires_at < time.time() and env.weight(slot_name) == 0:
            if hold is None:
                self.stop(env_name, slot_name)
                return f"stopped expired {env_name}/{slot_name} (version {slot.version})"
            log.info("kept expired %s/%s (version %s): %s", env_name, slot_name, slot.version, hold)
        if pid_alive(slot.pid):
            return None
        try:
            self._restart(env_name, slot_name, slot)
            return f"restarted {env_name}/{slot_name} (version {slot.version})"
        except (DeploymentError, IntegrityError) as exc:
            if env.weight(slot_name) > 0:
                raise  # it serves traffic: say so loudly rather than route around it silently
            self._forget(env_name, slot_name)
            return f"dropped dead {env_name}/{slot_name} (version {slot.version}): {exc}"

    def _restart(self, environment: str, slot_name: str, slot: Slot) -> None:
        """Start a dead slot again on its own port, from its (re-verified) bundle."""
        bundle = Path(slot.bundle_dir)
        verify_bundle(bundle)
        process = spawn_server(self.logs, environment, slot_name, bundle, slot.version, slot.port)
        state = self.store.load()
        state.env(environment).slots[slot_name] = slot.model_copy(
            update={"pid": process.pid, "started_at": time.time()}
        )
        self.store.save(state)
        if slot.expires_at is not None:  # the old watcher followed the old pid and has ended; started before the
            self._watch_expiry(environment, slot_name, process.pid)  # wait, which a rollback may interrupt
        self._wait_ready(state.env(environment).slots[slot_name], process)

    def stop_all(self) -> None:
        """Stop every slot and every router (``mlrelease down``, tests, ``make clean``)."""
        state = self.store.load()
        for env_name, env in state.environments.items():
            for slot in env.slots.values():
                stop_server(slot, self.drain_timeout_s, wait=False)
            self._router(env_name).stop()
        for env in state.environments.values():
            for slot in env.slots.values():
                stop_server(slot, self.drain_timeout_s)
            env.slots.clear()
            env.weights.clear()
        self.store.save(state)
