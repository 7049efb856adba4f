"""Incident rollbacks where real processes are the point, with real server processes, a real nginx, the real
registry and the real ``scripts/rollback.sh``: a rollback that takes over from a canary in the middle of its
analysis (through the real abort request) and from one whose server is still starting, a rollback killed with
SIGKILL right after it moved traffic and run again, and a stable replica killed under load (the supervisor restarts
it) and then stopped for good (status says so, reconcile restarts it). A load driver sends predictions through the
production entry point and must not see a single failed request.

Behaviour is checked through the script and the CLI (exit codes, output, ``mlrelease history``), the registry
aliases, the state file's slots and weights, and which version answers predictions through the entry point.

The same incidents' orchestration (every kill point of a rollback, a promotion killed after its switch, two
rollbacks at once, the registry down, a cold rollback, typos, a canary with no previous version, ``status``) runs
against the in-memory target in tests/unit/test_release_incidents.py and tests/unit/test_release_matrix.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from deploy.targets.local.state import DeployState
from deploy.targets.traffic import LoadDriver, LoadResult, predict_path, sample_rows
from mlrelease.core.http import wait_until
from mlrelease.core.modelcard import ModelCard
from mlrelease.core.proc import is_our_server, pid_alive
from release.journal import Journal
from tests.release_helpers import (
    BIN,
    FAST_RELEASE,
    REPO,
    alias,
    cli,
    env_for,
    make_variant,
    ok,
    register,
    registry,
    show,
    stop_everything,
    target,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.xdist_group("incidents"),  # one after the other: each drives load through a real nginx
    pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="nginx: run make setup"),
]

PROD = "production"
ROLLBACK = REPO / "scripts" / "rollback.sh"
LOAD = {"rps": 40, "concurrency": 4}


# ----- helpers ------------------------------------------------------------------------------------------------------


def rollback(
    home: Path, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run scripts/rollback.sh (from an unrelated cwd, as an operator would); return the result and its seconds."""
    started = time.monotonic()
    proc = subprocess.run(
        [str(ROLLBACK), *args],
        cwd=home.parent,
        env=env_for(home, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc, time.monotonic() - started


def answered_by(entry: str, model_name: str, rows: list[list[float]]) -> list[str]:
    """The version that answered each of a few predictions sent through the entry point (or the HTTP status)."""
    found = []
    with httpx.Client(timeout=10) as client:
        for row in rows:
            resp = client.post(entry + predict_path(model_name), json={"instances": [row]})
            found.append(
                str(resp.json().get("model_version")) if resp.status_code == 200 else f"HTTP {resp.status_code}"
            )
    return found


def versions_after(result: LoadResult, since: float) -> set[str]:
    """Versions that answered requests sent after ``since`` (time.monotonic())."""
    return {version for start, _, code, version in result.timeline if start > since and code == 200}


def load_summary(result: LoadResult) -> str:
    return f"{result.total} requests, statuses {dict(result.statuses)}, versions {dict(result.versions)}"


def history_rows(home: Path) -> list[dict[str, str]]:
    """`mlrelease history` parsed back into rows (continuation lines of folded cells are joined)."""
    text = ok(cli(home, "history", "--limit", "1000"))
    columns = ["when", "by", "action", "env", "alias", "from", "to", "image", "weights", "outcome", "reason"]
    rows: list[dict[str, str]] = []
    for line in text.splitlines():
        sep = "│" if "│" in line else "|"
        cells = [c.strip() for c in line.split(sep)[1:-1]]
        if len(cells) != len(columns) or cells[0] == "when (UTC)":
            continue
        if re.match(r"\d{4}-\d\d-\d\d", cells[0]):
            rows.append(dict(zip(columns, cells, strict=True)))
        elif rows:  # a folded cell goes on over the next lines
            for key, cell in zip(columns, cells, strict=True):
                if cell:
                    rows[-1][key] = f"{rows[-1][key]} {cell}"
    assert rows, f"`mlrelease history` printed no rows:\n{text}"
    return rows


def same_text(printed: str, expected: str) -> bool:
    """Equal but for whitespace (a folded table cell may be cut anywhere)."""
    return "".join(printed.split()) == "".join(expected.split())


@dataclass
class Incident:
    """A workspace with production traffic, plus every process a test starts in it, so teardown stops them all."""

    home: Path
    name: str
    bundle: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    servers: set[tuple[int, int]] = field(default_factory=set)  # (pid, port) of every server seen in the state

    def popen(self, args: list[str], out: Path) -> subprocess.Popen[bytes]:
        """Start a command in its own process group (so kill -9 reaches it and its children), output to a file."""
        with out.open("wb") as sink:
            proc = subprocess.Popen(
                args,
                cwd=self.home,
                env=env_for(self.home),
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def state(self) -> DeployState:
        state = target(self.home).store.load()
        for env in state.environments.values():
            self.servers.update((slot.pid, slot.port) for slot in env.slots.values())
        return state

    def teardown(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        try:
            self.state()
            stop_everything(self.home)
        finally:
            for pid, port in self.servers:  # a server an interrupted command stopped tracking must not outlive us
                if pid_alive(pid) and is_our_server(pid, port):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            for pid in self.watchers():  # rollback-window watchers sleep until the window ends (minutes)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def watchers(self) -> list[int]:
        """Pids of the detached rollback-window watchers (deploy.targets.local.expiry) started for this workspace."""
        import psutil

        state_dir = str(target(self.home).state_dir)
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if "deploy.targets.local.expiry" in cmdline and state_dir in cmdline:
                found.append(proc.info["pid"])
        return found


@pytest.fixture
def incident(registry_workspace, built_workspace) -> Iterator[Incident]:  # noqa: ANN001
    home = registry_workspace.root
    # The workspace copy's params.yaml (used by `mlrelease promote`, run from the workspace). scripts/rollback.sh
    # runs from the repository, so a rollback uses the repository's params.yaml, as in production.
    # two replicas per production slot, as by default: one of them is killed under load
    registry_workspace.set_params(**{**FAST_RELEASE, "promotion": {**FAST_RELEASE["promotion"], "replicas": 2}})
    bundle = home / "models"
    found = Incident(home, ModelCard.read(bundle).name, bundle)
    try:
        yield found
    finally:
        found.teardown()


def production_with_warm_previous(incident: Incident, tmp_path: Path) -> tuple[str, str]:
    """Version P (the pipeline's candidate) then version A (a same-behaviour copy) in production, the second
    with --force so P stays warm as the previous version. Returns (P, A)."""
    home, name = incident.home, incident.name
    p = alias(home, name, "candidate")
    assert p is not None, "the pipeline registers a candidate"
    a = register(make_variant(incident.bundle, tmp_path / "version-a", "same"), home, name, "incident-a")
    ok(cli(home, "promote", "production", "--version", p, "--force", "--reason", "test: first release"))
    promote_over(incident, a, p)
    return p, a


def promote_over(incident: Incident, version: str, previous: str) -> None:
    """Force ``version`` into production over ``previous``, which stays warm."""
    ok(
        cli(
            incident.home,
            "promote",
            "production",
            "--version",
            version,
            "--force",
            "--reason",
            f"test: {version} over {previous}",
        )
    )
    t = target(incident.home)
    assert (t.slot_version(PROD, "stable"), t.slot_version(PROD, "previous")) == (version, previous)
    assert t.weights(PROD) == {"stable": 100.0}
    incident.state()


def assert_all_on(incident: Incident, version: str, rows: list[list[float]], context: str = "") -> None:
    """All production traffic on ``version``: state, registry, and predictions through the entry point."""
    home, name = incident.home, incident.name
    t = target(home)
    state = t.store.load()
    env = state.env(PROD)
    where = f"state: weights {env.weights}, slots { {k: s.version for k, s in env.slots.items()} }\n{context}"
    assert env.weights == {"stable": 100.0}, where
    assert "stable" in env.slots and env.slots["stable"].version == version, where
    assert "canary" not in env.slots, where
    assert (alias(home, name, PROD), alias(home, name, "canary")) == (version, None), f"aliases\n{where}"
    entry = t.entry_url(PROD)
    assert entry is not None
    answers = answered_by(entry, name, rows)
    assert set(answers) == {version}, f"predictions through {entry} answered by {answers}\n{where}"


def start_canary(incident: Incident, log: Path) -> subprocess.Popen[bytes]:
    """`mlrelease promote canary` of the staging version with a long interval, once it has shifted traffic (it
    then sleeps mid-analysis with part of production's traffic on the canary)."""
    t = target(incident.home)
    canary = incident.popen([str(BIN / "mlrelease"), "promote", "canary", "--interval", "60s"], log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and t.weights(PROD).get("canary", 0) == 0:
        assert canary.poll() is None, f"the canary exited before shifting traffic:\n{log.read_text()}"
        time.sleep(0.2)
    assert t.weights(PROD).get("canary", 0) > 0, log.read_text()
    incident.state()
    return canary


def wait_gone(pid: int, timeout: float) -> bool:
    assert pid > 0, "no pid to wait for"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    return not pid_alive(pid)


# ----- 1. a rollback stops a canary, still starting or mid-analysis -------------------------------------------------
def with_staged_version(incident: Incident, tmp_path: Path) -> tuple[str, str, str]:
    """Production as production_with_warm_previous leaves it, plus a version C with the staging alias, ready for
    `promote canary`. Returns (P, A, C)."""
    p, a = production_with_warm_previous(incident, tmp_path)
    c = register(
        make_variant(incident.bundle, tmp_path / "version-c", "same"), incident.home, incident.name, "incident-c"
    )
    registry(incident.home).set_registered_model_alias(incident.name, "staging", c)
    return p, a, c


def rollback_takes_over_from_a_canary_mid_analysis(incident: Incident, tmp_path: Path, p: str, a: str, c: str) -> None:
    """A serves, P is warm, C is staged. A canary of C mid-analysis; the rollback asks it to abort (through the real
    abort request), moves production to P under load without a failed request, and the canary is undone first."""
    home, name = incident.home, incident.name
    rows = sample_rows(incident.bundle, 32)
    t = target(home)
    entry = t.entry_url(PROD)
    assert entry is not None

    # a canary of C, mid-analysis: a long interval keeps it sleeping with half of the traffic on C
    canary_log = tmp_path / "canary-mid-analysis.out"
    canary = start_canary(incident, canary_log)
    canary_slot = t.slot(PROD, "canary")
    assert canary_slot is not None and canary_slot.version == c
    busy = cli(home, "promote", "production")  # named as running, not as "has not passed canary"
    said = " ".join(busy.stderr.split())
    assert busy.returncode == 3 and "another promotion is running: `promote canary`" in said, show(busy)

    with LoadDriver(entry, name, rows, keep_timeline=True, max_seconds=180, **LOAD) as load:
        time.sleep(1.5)
        rolled, took = rollback(home, "--reason", "test")
        finished = time.monotonic()
        time.sleep(1.5)
    canary_code = canary.wait(timeout=60)
    canary_text = canary_log.read_text()
    print(
        f"rollback ({took:.1f} s): {show(rolled)}\ncanary: exit {canary_code}\n{canary_text}\n"
        f"load: {load_summary(load.result)}"
    )

    assert rolled.returncode == 0, show(rolled)
    assert took < 60, f"the rollback took {took:.1f} s\n{show(rolled)}"
    assert canary_code != 0 and "aborted" in canary_text.lower(), f"canary exit {canary_code}:\n{canary_text}"
    assert load.result.failed == 0 and load.result.rejected == 0, load_summary(load.result)
    assert load.result.versions[c] > 0, f"the canary never got load-driver traffic: {load_summary(load.result)}"
    assert versions_after(load.result, finished) == {p}, load_summary(load.result)
    assert_all_on(incident, p, rows, show(rolled))  # canary weight 0 and slot gone, aliases, answers by P
    assert t.slot_version(PROD, "previous") is None
    pids = [r.pid for r in canary_slot.replicas]
    assert all(pids) and all(wait_gone(pid, 20) for pid in pids), f"a canary server ({pids}) still runs"
    assert "nothing to do" in ok(rollback(home)[0])  # and the incident is over: a second run changes nothing
    huge = httpx.post(f"{entry}{predict_path(name)}", content=b"[" + b"0," * 1_500_000 + b"0]", timeout=30)
    assert huge.status_code == 413 and huge.json()["code"] == "body_too_large", huge.text[:200]  # JSON from nginx too

    history = history_rows(home)
    aborted = [r for r in history if r["action"] == "canary-rollback" and r["from"] == c]
    assert aborted and "abort" in aborted[-1]["reason"].lower(), history
    back = [r for r in history if r["action"] == "rollback"]
    assert back and (back[-1]["from"], back[-1]["to"], back[-1]["outcome"]) == (a, p, "done"), history
    assert same_text(back[-1]["reason"], "test"), history
    assert history.index(aborted[-1]) < history.index(back[-1]), "the canary is undone before the rollback"


def rollback_does_not_wait_for_a_canary_server_still_starting(
    incident: Incident, tmp_path: Path, p: str, c: str
) -> None:
    """A canary still waiting for its new server (up to the ready timeout, two minutes here) gives up the lock
    when a rollback asks: the rollback used to give up first, after its lock wait (15 s), and change nothing."""
    home = incident.home
    t = target(home)
    log = tmp_path / "canary-still-starting.out"
    canary = incident.popen([str(BIN / "mlrelease"), "promote", "canary"], log)
    slot = None
    deadline = time.monotonic() + 120
    # its replicas are recorded the moment they are added to the supervisor, and get pids as it starts them
    while (slot is None or not all(r.pid > 0 for r in slot.replicas)) and time.monotonic() < deadline:
        assert canary.poll() is None, f"the canary exited before starting its server:\n{log.read_text()}"
        slot = t.slot(PROD, "canary")
        time.sleep(0.02)
    assert slot is not None and slot.version == c and all(r.pid > 0 for r in slot.replicas), log.read_text()
    frozen = [r.pid for r in slot.replicas]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)  # frozen while it imports: it never answers /ready
    incident.state()
    try:
        assert t.slot_problem(PROD, "canary") is not None, "the canary's server was already ready"
        rolled, took = rollback(home, "--reason", "test: canary still starting")
        canary_code = canary.wait(timeout=30)
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # it handles the SIGTERM it was sent
    context = f"rollback ({took:.1f} s): {show(rolled)}\ncanary: exit {canary_code}\n{log.read_text()}"
    print(context)
    assert rolled.returncode == 0, context
    assert canary_code != 0 and "aborted" in log.read_text().lower(), context
    assert_all_on(incident, p, sample_rows(incident.bundle, 8), context)
    assert all(wait_gone(pid, 20) for pid in frozen), f"a canary server ({frozen}) still runs\n{context}"
    assert Journal(t.state_dir).load().operation is None, context
    stopped = [r for r in history_rows(home) if r["action"] == "canary-rollback" and r["from"] == c]
    assert stopped and "stillstarting" in "".join(stopped[-1]["reason"].split()), stopped  # who stopped it, why


def test_rollback_stops_a_canary_still_starting_then_takes_over_from_one_mid_analysis(
    incident: Incident, tmp_path: Path
) -> None:
    p, a, c = with_staged_version(incident, tmp_path)
    rollback_does_not_wait_for_a_canary_server_still_starting(incident, tmp_path, p, c)
    promote_over(incident, a, p)  # A again (forced: the rollback withdrew it), P warm again; C is still staged
    rollback_takes_over_from_a_canary_mid_analysis(incident, tmp_path, p, a, c)


# ----- 2. a stable server that dies, then a rollback killed part way ------------------------------------------------
Trigger = Callable[[DeployState], bool]


def kill_rollback(incident: Incident, log: Path, reason: str, trigger: Trigger, limit: float = 60) -> str:
    """Start scripts/rollback.sh and kill -9 its process group as soon as ``trigger`` holds for the state file.
    Returns where it was killed (it may also have finished first: the checks afterwards must hold either way)."""
    proc = incident.popen([str(ROLLBACK), "--reason", reason], log)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"not killed: it exited {proc.returncode} first"
        state = incident.state()
        if trigger(state):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            env = state.env(PROD)
            return f"killed with weights {env.weights} and slots { {k: s.version for k, s in env.slots.items()} }"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return f"killed after {limit:g} s without seeing the trigger"


def traffic_moved(goal: str) -> Trigger:
    """The state file says traffic left the bad version (the weights are written before nginx is reloaded)."""

    def check(state: DeployState) -> bool:
        env = state.env(PROD)
        return env.weights.get("previous", 0) >= 100 or ("stable" in env.slots and env.slots["stable"].version == goal)

    return check


def rollback_killed_midway_is_finished_by_the_next_run(incident: Incident, tmp_path: Path, p: str, a: str) -> None:
    """A serves, P is warm. scripts/rollback.sh killed as soon as the state file says traffic moved: nginx may not
    have reloaded yet, so the state is ahead of the router, and the re-run must route for real. (Every other kill
    point, the fast path's and the full command's, target and registry: tests/unit/test_release_incidents.py.)"""
    home, name = incident.home, incident.name
    rows = sample_rows(incident.bundle, 32)
    entry = target(home).entry_url(PROD)
    assert entry is not None
    bad_slot = target(home).slot(PROD, "stable")
    assert bad_slot is not None and bad_slot.version == a
    reason = "test: rollback killed once traffic moved"
    log = tmp_path / "killed-rollback.out"

    with LoadDriver(entry, name, rows, keep_timeline=True, max_seconds=180, **LOAD) as load:
        time.sleep(1.0)
        killed = kill_rollback(incident, log, reason, traffic_moved(p))
        second, _ = rollback(home, "--reason", reason)
        finished = time.monotonic()
        third, _ = rollback(home)
        time.sleep(1.0)
    context = (
        f"{killed}\nkilled run's output:\n{log.read_text()}\nsecond run: {show(second)}\n"
        f"third run: {show(third)}\nload: {load_summary(load.result)}"
    )
    print(context)

    # the second run finishes the job: traffic on P, alias moved, verified, the bad version stopped, audited
    assert second.returncode == 0 and "verified" in second.stdout, context
    assert_all_on(incident, p, rows, context)
    pids = [r.pid for r in bad_slot.replicas]
    assert all(pids) and all(wait_gone(pid, 30) for pid in pids), f"version {a}'s servers ({pids}) still run\n{context}"
    assert Journal(target(home).state_dir).load().operation is None, f"an operation is still journaled\n{context}"
    done = [r for r in history_rows(home) if r["action"] == "rollback" and same_text(r["reason"], reason)]
    assert done and (done[-1]["from"], done[-1]["to"], done[-1]["outcome"]) == (a, p, "done"), context
    # the third run is a harmless no-op
    assert third.returncode == 0 and "nothing to do" in third.stdout, context
    assert_all_on(incident, p, rows, context)
    # and the load driver saw no failed request, from before the kill to after the third run
    assert load.result.failed == 0 and load.result.rejected == 0, context
    assert load.result.total > 50 and load.result.versions[a] > 0, context
    assert versions_after(load.result, finished) == {p}, context


def stable_replicas_die_and_come_back(incident: Incident, a: str) -> None:
    """A serves with two supervised replicas. One killed under load: the supervisor restarts it with no command
    run and no request fails. One stopped for good (as when the supervisor gives up): `mlrelease status` exits 1
    naming it, `--json` shows it, and `mlrelease reconcile` restarts it."""
    home = incident.home
    rows = sample_rows(incident.bundle, 8)
    t = target(home)
    entry = t.entry_url(PROD)
    stable = t.slot(PROD, "stable")
    assert entry is not None and stable is not None and stable.version == a and len(stable.replicas) == 2
    load = LoadDriver(entry, incident.name, rows, rps=40, concurrency=4, max_seconds=60)
    load.start()
    try:
        time.sleep(1.0)
        assert stable.replicas[0].pid > 0, stable  # never 0: that would signal this whole process group
        os.kill(stable.replicas[0].pid, signal.SIGKILL)
        killed = stable.replicas[0].pid

        def back() -> bool:  # a new process, started by the supervisor alone, and every replica healthy again
            now = t.slot(PROD, "stable")
            fresh = now is not None and now.replicas[0].pid not in (0, killed)
            return fresh and all(r.healthy for row in t.status() if row.slot == "stable" for r in row.replicas)

        assert wait_until(back, 60, interval=0.2), t.status()
    finally:
        result = load.stop()
    assert result.failed == 0 and result.total > 20, result.statuses

    t.supervisor.stop(stable.replicas[0].program)  # down, and nobody restarts it
    down = cli(home, "status")
    said = " ".join(down.stdout.split())
    assert down.returncode == 1 and "down for good" in said and "mlrelease reconcile" in said, show(down)
    doc = json.loads(cli(home, "status", "--json").stdout)
    replicas = doc["environments"][PROD]["slots"]["stable"]["replicas"]
    # the sibling serves (the supervisor calls it STARTING for its first 10 s, RUNNING after)
    assert doc["healthy"] is False and replicas[0]["state"] == "STOPPED" and replicas[1]["healthy"], doc
    assert doc["environments"][PROD]["tls_url"].startswith("https://127.0.0.1:"), doc
    assert "restarted production/stable" in ok(cli(home, "reconcile"))
    ok(cli(home, "status"))
    assert_all_on(incident, a, rows)
    incident.state()


def test_a_dead_stable_is_restarted_and_a_rollback_killed_midway_is_finished_by_the_next_run(
    incident: Incident, tmp_path: Path
) -> None:
    p, a = production_with_warm_previous(incident, tmp_path)
    stable_replicas_die_and_come_back(incident, a)
    rollback_killed_midway_is_finished_by_the_next_run(incident, tmp_path, p, a)  # P is still warm
