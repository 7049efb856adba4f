"""The local deployment target (embedded default): server processes on loopback ports behind nginx.

Each slot runs one or more replicas of ``python -m deploy.serving``, each a program of the state folder's own
supervisord (:mod:`deploy.targets.local.supervisor`), which restarts a dead replica by itself, with backoff and a
give-up limit, whether or not a command runs. Routed environments get an nginx of their own (the replicas of each
slot in one upstream, with passive health checks and retries on a sibling), run as the current user with its
prefix, pid and temp paths under the state folder; weights are applied by rendering the config from the state file
and sending a graceful reload (SIGHUP), then waiting for the new generation. A warm slot given an expiry gets a
detached watcher (:mod:`deploy.targets.local.expiry`) that stops it when its window ends, unless expiry is on hold.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from deploy.targets.base import DeploymentError, DeploymentTarget, SlotStatus
from deploy.targets.local.container import RUNTIME_VAR, Runtime, choose_runtime, engine_of, prepare, remove_unused
from deploy.targets.local.processes import (
    container_program,
    detached_env,
    identity_problem,
    kill_orphans,
    replica_problem,
    replica_program,
    serving_problem,
    start_watch,
    stop_unsupervised,
)
from deploy.targets.local.router import Nginx
from deploy.targets.local.state import DeployState, Environment, Replica, Slot, StateStore
from deploy.targets.local.status import slot_rows
from deploy.targets.local.supervisor import Program, Supervisor
from deploy.targets.local.tls import TlsFiles, configured, self_signed
from mlrelease.core.http import probe, wait_until
from mlrelease.core.modelcard import IntegrityError, verify_bundle
from mlrelease.core.net import free_port
from mlrelease.core.proc import pid_alive

log = logging.getLogger(__name__)

METRICS_TIMEOUT_S = 2.0
EXITED_STATES = frozenset({"BACKOFF", "FATAL", "EXITED", "STOPPED"})


class LocalTarget(DeploymentTarget):
    """Supervised replicas on 127.0.0.1 and one nginx per routed environment."""

    name = "local"

    def __init__(
        self,
        state_dir: Path,
        *,
        routed: tuple[str, ...] = ("production",),
        ready_timeout_s: float = 90.0,
        drain_timeout_s: float = 15.0,
        entry_ports: Mapping[str, int] | None = None,
        replicas: Mapping[str, int] | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        start_retries: int = 3,
        metrics_headers: Mapping[str, str] | None = None,
        runtime: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.runtime_setting = runtime if runtime is not None else os.environ.get(RUNTIME_VAR)
        self._runtime: Runtime | None = None  # chosen on first need: a rollback to a warm slot never asks
        self.store = StateStore(self.state_dir)
        self.logs = self.state_dir / "logs"
        self.routed = routed
        self.ready_timeout_s = ready_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.entry_ports = dict(entry_ports or {})
        self.replicas = dict(replicas or {})
        self.tls_files = (tls_cert, tls_key)
        self.metrics_headers = dict(metrics_headers or {})  # the API key, when the servers protect /metrics
        self.start_retries = start_retries  # failed starts in a row before the supervisor gives up on a replica
        self.supervisor = Supervisor(self.state_dir, timeout_s=drain_timeout_s + 15.0)

    def describe(self) -> str:
        return (
            f"local, {self.runtime().describe()} runtime (state in {self.state_dir}, logs in {self.logs}; replicas "
            "supervised by supervisord)"
        )

    def runtime(self) -> Runtime:
        """How new slots run (``MLRELEASE_RUNTIME``): the image in a container, or a process from the venv."""
        if self._runtime is None:
            self._runtime = choose_runtime(self.runtime_setting)
        return self._runtime

    @property
    def runs_image(self) -> bool:
        return self.runtime().engine is not None

    def _router(self, environment: str) -> Nginx:
        prefix = self.state_dir / "nginx" / environment
        return Nginx(prefix, tls=self._tls(prefix) if environment in self.routed else None)

    def _tls(self, prefix: Path) -> TlsFiles:
        """The configured certificate, else a self-signed one for localhost in the router's folder."""
        return configured(*self.tls_files) or self_signed(prefix / "tls")

    # ----- processes -------------------------------------------------------------------------------------------
    def deploy(self, environment: str, slot: str, bundle_dir: Path, version: str, image: str | None = None) -> str:
        """Verify the bundle (and, in containers, that the image holds its artifact), start the slot's replicas
        (replacing nothing that routes), wait until all are ready."""
        card = verify_bundle(Path(bundle_dir))
        image_run = None
        engine = self.runtime().engine
        if engine is not None:
            if not image:
                raise DeploymentError(
                    f"version {version} has no serving image to run: `mlrelease build --version {version}`, then "
                    f"`mlrelease scan` (or {RUNTIME_VAR}=process to run it from this virtualenv)"
                )
            image_run = prepare(engine, self.state_dir, image, card.sha256)
        state = self.store.load()
        env = state.env(environment)
        if slot in env.slots and env.weight(slot) > 0:
            raise DeploymentError(
                f"{environment}/{slot} still receives {env.weight(slot)}% of traffic; route it away before replacing it"
            )
        self._ensure_supervisor(state)
        replaced = env.slots.pop(slot, None)
        if replaced is not None:
            self._stop_replicas(replaced, wait=True)
        ports = self._free_ports(max(1, self.replicas.get(environment, 1)))
        record = Slot(
            version=version,
            replicas=[Replica(port=port, program=f"r{port}") for port in ports],
            model_name=card.name,
            bundle_dir=str(Path(bundle_dir).resolve()),
            image_run=image_run,
        )
        env.slots[slot] = record
        self.store.save(state)  # recorded before it starts: a crash from here on leaves no orphan untracked
        self._release_images(replaced)
        try:
            for replica in record.replicas:
                self.supervisor.add(self._program(environment, slot, record, replica))
            self._wait_ready(record)
        except BaseException:  # not ready in time, or the wait interrupted: a server that never became ready
            self._forget(environment, slot)  # is stopped and dropped
            raise
        return record.url

    @staticmethod
    def _free_ports(count: int) -> list[int]:
        ports: list[int] = []
        while len(ports) < count:
            port = free_port()
            if port not in ports:
                ports.append(port)
        return ports

    def _program(self, environment: str, slot: str, record: Slot, replica: Replica) -> Program:
        if record.image_run is not None:
            return container_program(
                self.state_dir,
                environment,
                slot,
                record.version,
                record.image_run,
                replica.port,
                behind_router=environment in self.routed,
                drain_timeout_s=self.drain_timeout_s,
                start_retries=self.start_retries,
            )
        return replica_program(
            self.state_dir,
            environment,
            slot,
            record.version,
            Path(record.bundle_dir),
            replica.port,
            behind_router=environment in self.routed,
            drain_timeout_s=self.drain_timeout_s,
            start_retries=self.start_retries,
        )

    def _ensure_supervisor(self, state: DeployState) -> None:
        """Start the supervisor unless it runs; a fresh one starts every recorded replica from its program file,
        so servers left running by a supervisor that died are stopped first (they hold the ports)."""
        if self.supervisor.answering():
            return
        kill_orphans(
            [r for env in state.environments.values() for s in env.slots.values() for r in s.replicas if r.program],
            self.drain_timeout_s,
        )
        self.supervisor.ensure(detached_env())

    def _forget(self, environment: str, slot: str) -> None:
        """Stop a slot's replicas and remove it from the state, so later commands do not try to revive it."""
        state = self.store.load()
        dropped = state.env(environment).slots.pop(slot, None)
        if dropped is not None:
            self._stop_replicas(dropped, wait=False)
            self.store.save(state)
            self._release_images(dropped)

    def _release_images(self, *dropped: Slot | None) -> None:
        """Remove the working containers of the dropped slots' images that no recorded slot runs any more: what a
        stopped slot leaves on disk (with vfs, a full copy of its image)."""
        by_engine = {s.image_run.engine: s.image_run for s in dropped if s is not None and s.image_run is not None}
        if not by_engine:
            return
        runs = [s.image_run for env in self.store.load().environments.values() for s in env.slots.values()]
        in_use = {run.container for run in runs if run is not None and run.container}
        for run in by_engine.values():
            try:
                remove_unused(engine_of(run), self.state_dir, in_use)
            except DeploymentError as exc:
                log.warning("left working containers in place: %s", exc)

    def _stop_replicas(self, slot: Slot, wait: bool) -> None:
        """Stop every replica of the slot (each drains); supervised ones are also removed from the supervisor."""
        supervised = [replica.program for replica in slot.replicas if replica.program]
        self.supervisor.remove_many(supervised, wait=wait)
        for replica in slot.replicas:
            if not replica.program:
                stop_unsupervised(replica, self.drain_timeout_s, wait=wait)

    def _wait_ready(self, slot: Slot) -> None:
        """Wait until every replica answers /ready as the slot; fail at once when one exits or another answers."""

        def ready() -> bool:
            status, problem = identity_problem(slot)
            if problem is None:
                return True
            if status == 200:
                raise DeploymentError(f"{problem}; another server holds the port: see {self._log_hint(slot)}")
            for replica in slot.replicas:
                info = self.supervisor.info(replica.program) if replica.program else None
                if replica.program and (info is None or info.state in EXITED_STATES):
                    raise DeploymentError(
                        f"server for version {slot.version} on port {replica.port} exited before it was ready "
                        f"({info.state if info else 'unknown to the supervisor'}); see {self._log_hint(slot)}"
                    )
            return False

        if not wait_until(ready, self.ready_timeout_s, interval=0.05, interrupt=self.interrupt):
            raise DeploymentError(
                f"server for version {slot.version} not ready after {self.ready_timeout_s:g} s "
                f"on {slot.url}/ready; see {self._log_hint(slot)}"
            )

    def starting(self, environment: str, slot: str) -> bool:
        """A replica of the slot is being (re)started by the supervisor, or runs since less than the ready timeout
        without answering /ready yet (or answers 503: still loading). Otherwise it is not starting: it is broken."""
        found = self.store.load().env(environment).slots.get(slot)
        if found is None:
            return False
        for replica in found.replicas:
            info = self.supervisor.info(replica.program) if replica.program else None
            if info is None:
                continue
            if info.state in ("STARTING", "BACKOFF"):
                return True
            young = info.running and info.uptime < self.ready_timeout_s
            if young and replica_problem(found, replica)[0] in (0, 503):
                return True
        return False

    def _log_hint(self, slot: Slot) -> str:
        return str(self.logs / f"*-v{slot.version}-*.log")

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
            Nginx(self.state_dir / "nginx" / environment).wait_drained(self.drain_timeout_s)
        self._stop_replicas(found, wait=wait)
        # forget it only once it was told to stop: a crash before this line leaves a tracked (dead) slot, never
        # an untracked running server
        state = self.store.load()
        if state.env(environment).slots.get(slot) == found:
            del state.env(environment).slots[slot]
            self.store.save(state)
            self._release_images(found)

    def rename(self, environment: str, source: str, dest: str, expires_at: float | None = None) -> None:
        """Relabel a slot; the destination must be empty or not routed (it is stopped)."""
        state = self.store.load()
        env = state.env(environment)
        if source not in env.slots:
            raise DeploymentError(f"{environment}/{source} is empty; nothing to move to {dest}")
        replaced = env.slots.get(dest)
        if replaced is not None and env.weight(dest) > 0:
            raise DeploymentError(f"{environment}/{dest} still receives traffic; cannot replace it")
        if replaced is not None and replaced.uid != env.slots[source].uid:
            self._stop_replicas(replaced, wait=True)  # before it leaves the state: never untracked
        env.slots[dest] = env.slots.pop(source).model_copy(update={"expires_at": expires_at})
        moved = env.weights.pop(source, None)
        env.weights.pop(dest, None)
        if moved:
            env.weights[dest] = moved
        self.store.save(state)
        self._release_images(replaced)
        if expires_at is not None:
            self._watch_expiry(environment, dest, env.slots[dest].uid)

    def _watch_expiry(self, environment: str, slot: str, uid: str) -> None:
        """Start the detached watcher that stops the slot when its window ends (a failure only loses the timer:
        the next command's reconcile stops an expired slot too)."""
        try:
            start_watch(self.state_dir, environment, slot, uid)
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
        """Check every slot that gets traffic serves as itself, then write state, render nginx and reload."""
        state = self.store.load()
        env = state.env(environment)
        routed = {k: float(v) for k, v in weights.items() if v > 0}
        if abs(sum(routed.values()) - 100.0) > 1e-6:
            raise DeploymentError(f"weights {dict(weights)} for {environment} must add up to 100")
        for name in routed:
            slot = env.slots.get(name)
            if slot is None:
                raise DeploymentError(f"{environment}/{name} is empty; deploy a version there first")
            problem = serving_problem(slot)
            if problem is not None:
                raise DeploymentError(
                    f"{environment}/{name} (version {slot.version}) is not ready to take "
                    f"traffic: {problem}; no traffic was moved"
                )
        env.weights = routed
        self.store.save(state)
        if environment in self.routed:
            self.apply_routing(state, environment)

    def apply_routing(self, state: DeployState, environment: str, fresh: bool = False) -> None:
        """Render the router config from the state and start or gracefully reload nginx; wait for it to apply
        (``fresh``: reload even when unchanged, after replicas were restarted)."""
        env = state.env(environment)
        if env.entry_port is None or env.tls_port is None:
            env.entry_port = env.entry_port or self.entry_ports.get(environment) or free_port()
            env.tls_port = env.tls_port or next(p for p in iter(free_port, None) if p != env.entry_port)
            self.store.save(state)
        self._router(environment).apply(env, fresh=fresh)

    def entry_url(self, environment: str) -> str | None:
        env = self.store.load().env(environment)
        if environment in self.routed:
            return None if env.entry_port is None else f"http://127.0.0.1:{env.entry_port}"
        slot = env.slots.get("stable")
        return None if slot is None else slot.url

    def tls_url(self, environment: str) -> str | None:
        """The router's TLS listener (routed environments), None before it first routes."""
        port = self.store.load().env(environment).tls_port
        return None if environment not in self.routed or port is None else f"https://127.0.0.1:{port}"

    def weights(self, environment: str) -> dict[str, float]:
        return dict(self.store.load().env(environment).weights)

    def slot_url(self, environment: str, slot: str) -> str | None:
        found = self.store.load().env(environment).slots.get(slot)
        return None if found is None else found.url

    def slot_version(self, environment: str, slot: str) -> str | None:
        found = self.store.load().env(environment).slots.get(slot)
        return None if found is None else found.version

    def slot(self, environment: str, slot: str) -> Slot | None:
        """The full slot record (replicas with their live pids, bundle, expiry), None when empty."""
        found = self.store.load().env(environment).slots.get(slot)
        return None if found is None else self._live(found)

    def _live(self, slot: Slot) -> Slot:
        """The slot with each supervised replica's pid as the supervisor has it now (0: not running)."""
        replicas = []
        for replica in slot.replicas:
            if replica.program:
                info = self.supervisor.info(replica.program)
                replica = replica.model_copy(update={"pid": info.pid if info is not None and info.running else 0})
            replicas.append(replica)
        return slot.model_copy(update={"replicas": replicas})

    def slot_problem(self, environment: str, slot: str) -> str | None:
        found = self.store.load().env(environment).slots.get(slot)
        return f"{environment}/{slot} is empty" if found is None else serving_problem(found)

    def replica_urls(self, environment: str, slot: str) -> list[str]:
        """Each replica's own URL ([] when the slot is empty)."""
        found = self.store.load().env(environment).slots.get(slot)
        return [] if found is None else [replica.url for replica in found.replicas]

    def slot_metrics(self, environment: str, slot: str) -> str:
        """Every replica's /metrics page, one after the other (the analysis sums samples across them); a replica
        without a page is left out; DeploymentError saying why when no replica gives one."""
        urls = self.replica_urls(environment, slot)
        if not urls:
            raise DeploymentError(f"{environment}/{slot} is empty: no metrics to read")
        pages, problems = [], []
        for url in urls:
            code, body = probe(f"{url}/metrics", timeout=METRICS_TIMEOUT_S, headers=self.metrics_headers)
            if code == 200:
                pages.append(body)
            elif code == 0:
                problems.append(f"no connection to {url} ({body[:200]})")
            else:
                problems.append(f"HTTP {code} from {url}/metrics")
        if not pages:
            raise DeploymentError("; ".join(problems))
        return "\n".join(pages)

    # ----- supervision ----------------------------------------------------------------------------------------
    def status(self) -> list[SlotStatus]:
        return slot_rows(self.store.load(), self.supervisor)

    def reconcile(self) -> list[str]:
        """Start the supervisor if it died, restart replicas it gave up on, stop expired warm slots (unless expiry
        is on hold), make each router match the state; return what was done."""
        done: list[str] = []
        state = self.store.load()
        supervised = any(
            r.program for env in state.environments.values() for s in env.slots.values() for r in s.replicas
        )
        if supervised and not self.supervisor.answering():
            self._ensure_supervisor(state)
            done.append("started the supervisor again (it restarts every recorded replica)")
        for env_name, env in state.environments.items():
            for slot_name, slot in list(env.slots.items()):
                said = self._reconcile_slot(env_name, env, slot_name, slot, state.expiry_hold)
                if said is not None:
                    done.append(said)
            if env_name in self.routed and env.weights:
                restarted = any(line.startswith(f"restarted {env_name}/") for line in done)
                self.apply_routing(self.store.load(), env_name, fresh=restarted)
        return done

    def _reconcile_slot(
        self, env_name: str, env: Environment, slot_name: str, slot: Slot, hold: str | None
    ) -> str | None:
        """Stop the slot if its window is over (and expiry not held), restart replicas that are down for good;
        say what was done."""
        if slot.expires_at and slot.expires_at < time.time() and env.weight(slot_name) == 0:
            if hold is None:
                self.stop(env_name, slot_name)
                return f"stopped expired {env_name}/{slot_name} (version {slot.version})"
            log.info("kept expired %s/%s (version %s): %s", env_name, slot_name, slot.version, hold)
        down = [replica for replica in slot.replicas if self._down_for_good(replica)]
        if not down:
            return None
        try:
            self._restart(env_name, slot_name, slot, down)
            return f"restarted {env_name}/{slot_name} (version {slot.version}): {len(down)} replica(s)"
        except (DeploymentError, IntegrityError) as exc:
            if env.weight(slot_name) > 0:
                raise  # it serves traffic: say so loudly rather than route around it silently
            self._forget(env_name, slot_name)
            return f"dropped dead {env_name}/{slot_name} (version {slot.version}): {exc}"

    def _down_for_good(self, replica: Replica) -> bool:
        """A replica the supervisor does not keep running: unknown to it, stopped, or given up (FATAL); or an
        unsupervised server from before supervision that died."""
        if not replica.program:
            return not pid_alive(replica.pid)
        info = self.supervisor.info(replica.program)
        return info is None or info.state in ("STOPPED", "EXITED", "FATAL")

    def _restart(self, environment: str, slot_name: str, slot: Slot, down: list[Replica]) -> None:
        """Start the slot's downed replicas again under the supervisor, on their ports, from the re-verified bundle."""
        verify_bundle(Path(slot.bundle_dir))
        self._ensure_supervisor(self.store.load())
        state = self.store.load()
        record = state.env(environment).slots.get(slot_name)
        if record is None or record.uid != slot.uid:
            return  # replaced meanwhile
        replicas = [
            r.model_copy(update={"program": r.program or f"r{r.port}", "pid": 0}) if r in down else r
            for r in record.replicas
        ]
        record = record.model_copy(update={"replicas": replicas})
        state.env(environment).slots[slot_name] = record
        self.store.save(state)
        for replica in record.replicas:
            if replica.port in {r.port for r in down}:
                self.supervisor.add(self._program(environment, slot_name, record, replica))
        self._wait_ready(record)

    def stop_all(self) -> None:
        """Stop every slot, every router and the supervisor (``mlrelease down``, tests, ``make clean``)."""
        state = self.store.load()
        for env_name, env in state.environments.items():
            for slot in env.slots.values():
                self._stop_replicas(slot, wait=False)
            Nginx(self.state_dir / "nginx" / env_name).stop()
        for env in state.environments.values():
            for slot in env.slots.values():
                self._stop_replicas(slot, wait=True)
        dropped = [slot for env in state.environments.values() for slot in env.slots.values()]
        for env in state.environments.values():
            env.slots.clear()
            env.weights.clear()
        self.store.save(state)
        self._release_images(*dropped)
        self.supervisor.shutdown()
