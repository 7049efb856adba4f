"""Incident rollbacks in the hard cases, with real server processes, a real nginx, the real registry and the real
``scripts/rollback.sh``: a rollback that takes over from a canary in the middle of its analysis, and a rollback
killed with SIGKILL part way and run again. A load driver sends predictions through the production entry point the
whole time and must not see a single failed request.

Behaviour is checked through the script and the CLI (exit codes, output, ``mlrelease history``), the registry
aliases, the state file's slots and weights, and which version answers predictions through the entry point.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from deploy.targets.local.state import DeployState
from deploy.targets.traffic import LoadDriver, LoadResult, predict_path, sample_rows
from mlrelease.core.locking import promotion_lock
from mlrelease.core.modelcard import ModelCard
from mlrelease.core.net import free_port
from mlrelease.core.proc import is_our_server, pid_alive
from release.journal import Journal, Operation
from tests.release_helpers import (
    BIN,
    FAST_RELEASE,
    REPO,
    alias,
    audit_actions,
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
    pytest.mark.xdist_group("release-story"),
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
    columns = ["when", "by", "action", "env", "alias", "from", "to", "weights", "outcome", "reason"]
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
    registry_workspace.set_params(**FAST_RELEASE)
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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    return not pid_alive(pid)


# ----- 1. a rollback takes over from a running canary ---------------------------------------------------------------
def with_staged_version(incident: Incident, tmp_path: Path) -> tuple[str, str, str]:
    """Production as production_with_warm_previous leaves it, plus a version C with the staging alias, ready for
    `promote canary`. Returns (P, A, C)."""
    p, a = production_with_warm_previous(incident, tmp_path)
    c = register(
        make_variant(incident.bundle, tmp_path / "version-c", "same"), incident.home, incident.name, "incident-c"
    )
    registry(incident.home).set_registered_model_alias(incident.name, "staging", c)
    return p, a, c


def test_rollback_takes_over_from_a_running_canary(incident: Incident, tmp_path: Path) -> None:
    home, name = incident.home, incident.name
    p, a, c = with_staged_version(incident, tmp_path)
    rows = sample_rows(incident.bundle, 32)
    t = target(home)
    entry = t.entry_url(PROD)
    assert entry is not None

    # a canary of C, mid-analysis: a long interval keeps it sleeping with half of the traffic on C
    canary_log = tmp_path / "canary.out"
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
    assert wait_gone(canary_slot.pid, 20), f"the canary server (pid {canary_slot.pid}) still runs"
    assert "nothing to do" in ok(rollback(home)[0])  # and the incident is over: a second run changes nothing

    history = history_rows(home)
    aborted = [r for r in history if r["action"] == "canary-rollback" and r["from"] == c]
    assert aborted and "abort" in aborted[-1]["reason"].lower(), history
    back = [r for r in history if r["action"] == "rollback"]
    assert back and (back[-1]["from"], back[-1]["to"], back[-1]["outcome"]) == (a, p, "done"), history
    assert same_text(back[-1]["reason"], "test"), history
    assert history.index(aborted[-1]) < history.index(back[-1]), "the canary is undone before the rollback"


def test_rollback_does_not_wait_for_a_canary_server_that_is_still_starting(incident: Incident, tmp_path: Path) -> None:
    """A canary still waiting for its new server (up to the ready timeout, two minutes here) gives up the lock
    when a rollback asks: the rollback used to give up first, after its lock wait (15 s), and change nothing."""
    home = incident.home
    p, a, c = with_staged_version(incident, tmp_path)
    t = target(home)
    log = tmp_path / "canary.out"
    canary = incident.popen([str(BIN / "mlrelease"), "promote", "canary"], log)
    slot = None
    deadline = time.monotonic() + 120
    while slot is None and time.monotonic() < deadline:  # the server is recorded the moment it is spawned
        assert canary.poll() is None, f"the canary exited before starting its server:\n{log.read_text()}"
        slot = t.slot(PROD, "canary")
        time.sleep(0.02)
    assert slot is not None and slot.version == c, log.read_text()
    os.kill(slot.pid, signal.SIGSTOP)  # frozen while it imports: it never answers /ready
    incident.state()
    try:
        assert t.slot_problem(PROD, "canary") is not None, "the canary's server was already ready"
        rolled, took = rollback(home, "--reason", "test: canary still starting")
        canary_code = canary.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(slot.pid, signal.SIGCONT)  # it handles the SIGTERM it was sent
    context = f"rollback ({took:.1f} s): {show(rolled)}\ncanary: exit {canary_code}\n{log.read_text()}"
    print(context)
    assert rolled.returncode == 0, context
    assert canary_code != 0 and "aborted" in log.read_text().lower(), context
    assert_all_on(incident, p, sample_rows(incident.bundle, 8), context)
    assert wait_gone(slot.pid, 20), f"the canary server (pid {slot.pid}) still runs\n{context}"
    assert Journal(t.state_dir).load().operation is None, context
    stopped = [r for r in history_rows(home) if r["action"] == "canary-rollback" and r["from"] == c]
    assert stopped and "stillstarting" in "".join(stopped[-1]["reason"].split()), stopped  # who stopped it, why


# ----- 1b. mistakes, and a canary when production has nowhere to go back to ------------------------------------------
def test_rollback_refuses_typos_and_stops_a_canary_with_no_previous_version(incident: Incident, tmp_path: Path) -> None:
    home, name = incident.home, incident.name
    p = alias(home, name, "candidate")
    assert p is not None
    ok(cli(home, "promote", "production", "--version", p, "--force", "--reason", "test: first release"))
    t = target(home)

    # a version that does not exist is named as such, and leaves nothing behind that would block the next command
    for typo in ("99", "abc"):
        wrong, _ = rollback(home, "--to", typo, "--reason", "typo")
        assert wrong.returncode == 2 and "is not registered" in wrong.stderr, show(wrong)
        assert "registered versions:" in wrong.stderr and "nothing was changed" in " ".join(wrong.stderr.split())
        assert Journal(t.state_dir).load().operation is None, "a refused rollback journaled an operation"
    promote_typo = cli(home, "promote", "staging", "--version", "99")
    assert promote_typo.returncode == 2 and "is not registered" in promote_typo.stderr, show(promote_typo)
    assert Journal(t.state_dir).load().operation is None
    nothing, _ = rollback(home)
    assert nothing.returncode == 2 and "no previous production version" in nothing.stderr, show(nothing)

    # a canary of C holds part of the traffic; production has no previous version, yet the rollback stops the canary
    c = register(make_variant(incident.bundle, tmp_path / "version-c", "same"), home, name, "incident-c")
    registry(home).set_registered_model_alias(name, "staging", c)
    canary_log = tmp_path / "canary.out"
    canary = start_canary(incident, canary_log)
    rolled, _ = rollback(home, "--reason", "pager: canary errors")
    said = " ".join(rolled.stdout.split())
    assert rolled.returncode == 0 and f"canary of version {c} stopped" in said, show(rolled)
    assert canary.wait(timeout=60) != 0 and "aborted" in canary_log.read_text().lower(), canary_log.read_text()
    rows = sample_rows(incident.bundle, 16)
    assert_all_on(incident, p, rows, show(rolled))
    entry = t.entry_url(PROD)
    huge = httpx.post(f"{entry}{predict_path(name)}", content=b"[" + b"0," * 1_500_000 + b"0]", timeout=30)
    assert huge.status_code == 413 and huge.json()["code"] == "body_too_large", huge.text[:200]  # JSON from nginx too
    stopped = [r for r in history_rows(home) if r["action"] == "rollback" and r["from"] == c]
    assert stopped and stopped[-1]["outcome"] == "canary stopped", history_rows(home)

    # status: healthy says so with 0; run from elsewhere it refuses to guess; production down is exit 1
    ok(cli(home, "status"))
    elsewhere = subprocess.run(
        [str(BIN / "mlrelease"), "status"],
        cwd=tmp_path,
        env={**env_for(home), "MLRELEASE_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert elsewhere.returncode == 2 and "no mlrelease project" in elsewhere.stderr, show(elsewhere)
    stable = t.slot(PROD, "stable")
    assert stable is not None
    os.kill(stable.pid, signal.SIGKILL)
    assert wait_gone(stable.pid, 20)
    down = cli(home, "status")
    assert down.returncode == 1 and "is not healthy" in " ".join(down.stdout.split()), show(down)
    assert "restarted production/stable" in ok(cli(home, "reconcile"))
    ok(cli(home, "status"))
    assert "nothing to do" in ok(cli(home, "reconcile"))
    assert_all_on(incident, p, rows)
    incident.state()


# ----- 2. recovery after an interrupted rollback --------------------------------------------------------------------
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


def bad_slot_dropped(goal: str) -> Trigger:
    """The state file no longer lists the bad version's stable slot (it is being stopped)."""

    def check(state: DeployState) -> bool:
        stable = state.env(PROD).slots.get("stable")
        return stable is None or stable.version == goal

    return check


def slots_switched(goal: str) -> Trigger:
    """The state file says the good version holds the stable slot again (the registry alias has not moved yet)."""

    def check(state: DeployState) -> bool:
        stable = state.env(PROD).slots.get("stable")
        return stable is not None and stable.version == goal

    return check


# Where the first run is killed, in the order a rollback gets there. A point it passes too fast to be seen just
# means a later one (or none): the checks after the re-run must hold wherever it died.
KILL_POINTS: dict[str, Callable[[str], Trigger]] = {
    "traffic-moved": traffic_moved,
    "bad-slot-dropped": bad_slot_dropped,
    "slots-switched": slots_switched,
}


@pytest.mark.parametrize("where", list(KILL_POINTS))
def test_rollback_killed_midway_is_finished_by_the_next_run(incident: Incident, tmp_path: Path, where: str) -> None:
    home, name = incident.home, incident.name
    p, a = production_with_warm_previous(incident, tmp_path)
    rows = sample_rows(incident.bundle, 32)
    entry = target(home).entry_url(PROD)
    assert entry is not None
    bad_slot = target(home).slot(PROD, "stable")
    assert bad_slot is not None and bad_slot.version == a
    reason = f"test: rollback killed at {where}"
    log = tmp_path / "killed-rollback.out"

    with LoadDriver(entry, name, rows, keep_timeline=True, max_seconds=180, **LOAD) as load:
        time.sleep(1.0)
        killed = kill_rollback(incident, log, reason, KILL_POINTS[where](p))
        second, _ = rollback(home, "--reason", reason)
        finished = time.monotonic()
        third, _ = rollback(home)
        time.sleep(1.0)
    context = (
        f"[{where}] {killed}\nkilled run's output:\n{log.read_text()}\nsecond run: {show(second)}\n"
        f"third run: {show(third)}\nload: {load_summary(load.result)}"
    )
    print(context)

    # the second run finishes the job: traffic on P, alias moved, verified, the bad version stopped, audited
    assert second.returncode == 0 and "verified" in second.stdout, context
    assert_all_on(incident, p, rows, context)
    assert wait_gone(bad_slot.pid, 30), f"version {a}'s server (pid {bad_slot.pid}) still runs\n{context}"
    assert journal(home).load().operation is None, f"an interrupted operation is still journaled\n{context}"
    done = [r for r in history_rows(home) if r["action"] == "rollback" and same_text(r["reason"], reason)]
    assert done and (done[-1]["from"], done[-1]["to"], done[-1]["outcome"]) == (a, p, "done"), context
    # the third run is a harmless no-op
    assert third.returncode == 0 and "nothing to do" in third.stdout, context
    assert_all_on(incident, p, rows, context)
    # and the load driver saw no failed request, from before the kill to after the third run
    assert load.result.failed == 0 and load.result.rejected == 0, context
    assert load.result.total > 50 and load.result.versions[a] > 0, context
    assert versions_after(load.result, finished) == {p}, context


# ----- 3. recovery of a promotion that died -------------------------------------------------------------------------
def journal_killed(
    incident: Incident, command: str, version: str, reason: str | None = None, **state_changes: object
) -> None:
    """The state a promotion leaves when it is killed: its journal entry (its pid gone) plus ``state_changes``."""
    store = journal(incident.home)
    state = store.load()
    for key, value in state_changes.items():
        setattr(state, key, value)
    state.operation = Operation(command=command, version=version, pid=2**22 + 11, by="killed-in-test", reason=reason)
    store.save(state)


def journal(home: Path) -> Journal:
    """The release journal of the workspace at ``home``."""
    return Journal(target(home).state_dir)


def killed_switch_to(incident: Incident, version: str, bundle: Path, rows: list[list[float]]) -> None:
    """`promote production` of a version that passed its canary, killed after its switch and before its renames:
    the version serves 100% from the canary slot while the stable slot still holds the one it replaces."""
    home, name = incident.home, incident.name
    client = registry(home)
    client.set_registered_model_alias(name, "canary", version)  # as its passed canary left it
    client.set_model_version_tag(name, version, "mlrelease.canary_passed", "true")
    t = target(home)
    t.deploy(PROD, "canary", bundle, version)
    t.set_weights(PROD, {"canary": 100.0})
    assert set(answered_by(t.entry_url(PROD) or "", name, rows)) == {version}
    journal_killed(incident, "promote production", version)
    incident.state()


def assert_withdrawn(incident: Incident, version: str, to: str, records: int) -> None:
    """``version`` tagged rolled back, its canary pass withdrawn, and that many rollback records away from it."""
    tags = registry(incident.home).get_model_version(incident.name, version).tags
    assert tags.get("mlrelease.canary_passed") == "false" and "misbehaves" in tags.get("mlrelease.rolled_back", ""), (
        tags
    )
    back = [r for r in history_rows(incident.home) if r["action"] == "rollback" and r["from"] == version]
    assert len(back) == records and {r["to"] for r in back} == {to}, back
    assert all("misbehaves" in "".join(r["reason"].split()) for r in back), back


def patient_params(tmp_path: Path) -> str:
    """The repository's params.yaml with a minute's lock wait for rollbacks (queued on purpose in a test)."""
    import yaml

    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["promotion"]["rollback_lock_wait"] = "60s"
    path = tmp_path / "params-patient.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_the_next_command_finishes_a_done_switch_and_restarts_a_dead_stable(incident: Incident, tmp_path: Path) -> None:
    """`promote production` killed after its switch, before its alias and history: the next command finishes it
    (it used to write it down as undone, the alias on the old version). Then a `promote canary` that died with
    its machine, the stable slot dead too: the next command restarts stable and routes all traffic to it (it used
    to fail on the dead slot every time, until the state file was edited by hand)."""
    home, name = incident.home, incident.name
    p, a = production_with_warm_previous(incident, tmp_path)
    rows = sample_rows(incident.bundle, 8)
    history = journal(home).load().production_history
    assert history[-1] == a
    # A had passed a canary against another stable than P: the killed command was forced (--force --reason), and
    # recovery records it so, with its reason (it used to record a plain "done")
    for key, value in {"mlrelease.canary_passed": "true", "mlrelease.canary_passed_against": "99"}.items():
        registry(home).set_model_version_tag(name, a, key, value)
    journal_killed(incident, "promote production", a, "hotfix over a stale pass", production_history=history[:-1])
    registry(home).set_registered_model_alias(name, PROD, p)
    said = " ".join(ok(cli(home, "reconcile")).split())
    assert f"production: version {a} serves 100% of traffic" in said, said
    assert_all_on(incident, a, rows, said)
    incident.state()
    state = journal(home).load()
    assert state.production_history[-1:] == [a] and state.operation is None
    finished = [r for r in history_rows(home) if r["action"] == "promote" and r["to"] == a]
    assert "finished by recovery" in finished[-1]["reason"], finished
    assert "hotfixoverastalepass" in "".join(finished[-1]["reason"].split()), finished  # a folded cell: no spaces
    assert finished[-1]["outcome"] == "forced", finished

    journal_killed(incident, "promote canary", p)
    stable = target(home).slot(PROD, "stable")
    assert stable is not None
    os.kill(stable.pid, signal.SIGKILL)
    assert wait_gone(stable.pid, 20)
    store = target(home).store
    state = store.load()
    state.env(PROD).weights = {"stable": 90.0, "previous": 10.0}  # as a canary step had it (previous stands in)
    store.save(state)
    said = " ".join(ok(cli(home, "reconcile")).split())
    assert "restarted production/stable" in said and "100% back on stable" in said, said
    assert_all_on(incident, a, rows, said)
    assert journal(incident.home).load().operation is None

    # `promote production` of C killed after its switch, before its renames: C serves 100% from the canary slot.
    # The on-call's rollback undoes C and stops there; it used to go on to P, stopping the healthy A and tagging
    # it rolled back while C kept its canary pass.
    c_bundle = make_variant(incident.bundle, tmp_path / "version-c", "same")
    c = register(c_bundle, home, name, "incident-c")
    client = registry(home)
    t = target(home)
    reason = "test: the new version misbehaves"
    killed_switch_to(incident, c, c_bundle, rows)
    preview, _ = rollback(home, "--dry-run")  # names the recovery first, and that the real run stops after it
    said = " ".join(preview.stdout.split())
    assert preview.returncode == 0 and f"would first recover the interrupted `promote production` of version {c}" in (
        said
    ), show(preview)
    assert f"put production back on version {a} and withdraw version {c}" in said, said
    assert "nothing more to do after that" in said and "would move" not in said, said
    assert journal(home).load().operation is not None and t.weights(PROD) == {"canary": 100.0}, said
    # two on-calls at once, both finding the dead promotion before either has the lock: one undoes it and withdraws
    # version C, the other finds that done (both used to withdraw it and record it)
    patient = patient_params(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        with promotion_lock(t.state_dir, "test: both rollbacks queue", "test"):
            started = [pool.submit(rollback, home, "--reason", reason, "--params", patient) for _ in range(2)]
            time.sleep(8)  # each reads the journal within seconds, then waits for the lock (60 s)
        runs = sorted((run.result()[0] for run in started), key=lambda r: "nothing more to do" not in r.stdout)
    said = " ".join(" ".join(r.stdout.split()) for r in runs)
    assert [r.returncode for r in runs] == [0, 0], [show(r) for r in runs]
    assert "nothing more to do" in runs[0].stdout, said
    assert f"already rolled back from version {c} to {a}" in runs[1].stdout, said
    assert_all_on(incident, a, rows, said)  # the canary alias included: gone
    assert t.slot_version(PROD, "previous") == p, said
    assert "mlrelease.rolled_back" not in client.get_model_version(name, a).tags, said
    assert_withdrawn(incident, c, a, records=1)
    again, _ = rollback(home)  # a second run is harmless: it used to go on from A to P (and tag A rolled back)
    assert again.returncode == 0 and f"already rolled back from version {c} to {a}" in again.stdout, show(again)
    assert_all_on(incident, a, rows, show(again))
    # C canaried again and its switch killed again: the mark of the first time is no reason to skip withdrawing it
    killed_switch_to(incident, c, c_bundle, rows)
    rolled, _ = rollback(home, "--reason", reason)
    assert rolled.returncode == 0 and "nothing more to do" in rolled.stdout, show(rolled)
    assert_all_on(incident, a, rows, show(rolled))
    assert_withdrawn(incident, c, a, records=2)
    # and once more, recovered meanwhile by another command (a CI retry, a reconcile) while the rollback waits for
    # the lock: that recovery withdraws nothing, so the rollback does (it used to plan from there and move on to P)
    killed_switch_to(incident, c, c_bundle, rows)
    recover = (
        "from pathlib import Path; from mlrelease.commands.release import build_promoter; "
        "from release.outcome import Outcome; "
        "build_promoter(Path('params.yaml'), 'ci-retry', False).recover(Outcome())"
    )
    with ThreadPoolExecutor(1) as pool:
        with promotion_lock(t.state_dir, "test: another command recovers it", "test"):
            waiting = pool.submit(rollback, home, "--reason", reason, "--params", patient)
            time.sleep(6)  # the rollback has read the journal and waits for the lock
            subprocess.run([str(BIN / "python"), "-c", recover], cwd=home, env=env_for(home), check=True, timeout=120)
            assert journal(home).load().operation is None and t.weights(PROD) == {"stable": 100.0}
        rolled = waiting.result()[0]
    assert rolled.returncode == 0 and "nothing more to do" in rolled.stdout, show(rolled)
    assert_all_on(incident, a, rows, show(rolled))
    assert_withdrawn(incident, c, a, records=3)

    # `promote production` of A killed after its switch (as at the start), and the registry down: recovery cannot
    # write A's alias, but the rollback still moves production to the warm P, then says what is left
    # (without the mark of the rollback above, which names A: this simulated promotion switches to the version
    # already serving, a real one to another version, which no mark names)
    history = journal(home).load().production_history
    journal_killed(incident, "promote production", a, production_history=history[:-1], last_rollback=None)
    down = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    rolled, _ = rollback(home, "--reason", "test: registry down too", env=down)
    said = " ".join((rolled.stdout + rolled.stderr).split())
    assert rolled.returncode == 1 and "its alias could not be set" in said, show(rolled)
    assert "production traffic is on version " + p in said, said
    assert set(answered_by(t.entry_url(PROD) or "", name, rows)) == {p}, said
    finished, _ = rollback(home)  # the registry is back: the same rollback is finished
    assert_all_on(incident, p, rows, show(finished))


def test_a_cold_rollback_keeps_the_warm_previous_version_warm_whether_it_starts_or_not(
    incident: Incident, tmp_path: Path
) -> None:
    """The version to go back to is not warm. When its server does not come up in time, production stays where it
    is, the rollback ends (it used to stay journaled, so every later rollback retried the same version and every
    `--to` and promotion was refused) and the warm previous version is still warm (it used to be stopped to make
    room). A canary that passed and waits at weight 0 is stopped to make room, and its alias goes with it (it used
    to stay, naming a canary nothing served). When it starts, it takes all traffic and the warm previous version is
    still there too."""
    import yaml

    home, name = incident.home, incident.name
    p, a = production_with_warm_previous(incident, tmp_path)
    b = register(make_variant(incident.bundle, tmp_path / "version-b", "same"), home, name, "incident-b")
    promote_over(incident, b, a)  # b serves, a is warm, p is cold
    c = register(make_variant(incident.bundle, tmp_path / "version-c", "same"), home, name, "incident-c")
    registry(home).set_registered_model_alias(name, "staging", c)
    ok(cli(home, "promote", "canary"))  # c passes and waits at weight 0 in the canary slot
    assert target(home).slot_version(PROD, "canary") == c and alias(home, name, "canary") == c
    rows = sample_rows(incident.bundle, 8)
    warm = target(home).slot(PROD, "previous")
    assert warm is not None and warm.version == a
    params_file = home / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    kept = params["promotion"]["ready_timeout"]
    params["promotion"]["ready_timeout"] = "0.2s"  # no server is ready that fast: the cold start fails
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    failed = cli(home, "rollback", "--to", p, "--reason", "test: cold start fails")
    said = " ".join((failed.stdout + failed.stderr).split())
    assert failed.returncode == 1, show(failed)
    assert f"version {p} could not be started, so no traffic moved: production stays on version {b}" in said, said
    assert f"version {a} is still warm: run scripts/rollback.sh --to {a}" in said, said
    assert f"The canary of version {c}, waiting at weight 0, was stopped to make room for it, and its alias" in said
    assert alias(home, name, "canary") is None and target(home).slot_version(PROD, "canary") is None
    stopped = [r for r in audit_actions(home) if r.get("outcome") == "canary stopped"]
    assert stopped and stopped[-1]["from_version"] == c and f"start version {p}" in stopped[-1]["reason"], stopped
    assert journal(incident.home).load().operation is None
    assert_all_on(incident, b, rows, said)
    assert target(home).slot(PROD, "previous") == warm and pid_alive(warm.pid)

    params["promotion"]["ready_timeout"] = kept
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    said = " ".join(ok(cli(home, "rollback", "--to", p, "--reason", "test: cold start works")).split())
    assert f"version {p} is not warm: starting it" in said and "cold switch" in said, said
    assert_all_on(incident, p, rows, said)
    assert target(home).slot(PROD, "previous") == warm and pid_alive(warm.pid), said
    assert target(home).slot(PROD, "canary") is None
    again, _ = rollback(home)  # the script again, as an on-call would: its fast path must not move on to a
    assert again.returncode == 0 and "nothing to do" in again.stdout, show(again)
    assert_all_on(incident, p, rows, show(again))

    said = " ".join(ok(cli(home, "rollback", "--to", a, "--reason", "test: back to the warm one")).split())
    assert "warm switch" in said, said
    assert_all_on(incident, a, rows, said)

    # c passed its canary against b; production has moved on since: that pass no longer lets c in without --force
    stale = cli(home, "promote", "production", "--version", c)
    said = " ".join(stale.stderr.split())
    assert stale.returncode == 2, show(stale)
    assert f"passed its canary against version {b}, but production now serves version {a}" in said, said
    assert_all_on(incident, a, rows, said)


def test_a_canary_whose_stable_dies_is_dropped_and_stable_restarted(incident: Incident, tmp_path: Path) -> None:
    """Stable killed mid-canary: nginx sends its share to the canary (each routed slot backs up the other) and the
    analysis stops the canary. Dropping it restarts stable first; it used to fail on the dead stable and leave the
    canary it had just stopped for cause with all of production's traffic and its alias."""
    _, a, _ = with_staged_version(incident, tmp_path)
    rows = sample_rows(incident.bundle, 8)
    t = target(incident.home)
    log = tmp_path / "canary.out"
    canary = incident.popen([str(BIN / "mlrelease"), "promote", "canary"], log)  # FAST_RELEASE: one 50% step
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and t.weights(PROD).get("canary", 0) == 0:
        assert canary.poll() is None, f"the canary exited before shifting traffic:\n{log.read_text()}"
        time.sleep(0.05)
    incident.state()
    stable = t.slot(PROD, "stable")
    assert stable is not None and stable.version == a
    os.kill(stable.pid, signal.SIGKILL)
    code = canary.wait(timeout=180)
    said = " ".join(log.read_text().split())
    assert code != 0 and "rolled back" in said, f"canary exit {code}: {said}"
    assert "reconciled: restarted production/stable" in said, said  # the restart is shown, not only logged
    assert_all_on(incident, a, rows, said)
    restarted = t.slot(PROD, "stable")
    assert restarted is not None and restarted.pid != stable.pid
    assert journal(incident.home).load().operation is None
