"""Incidents as the on-call engineer meets them, through the real command line (``mlrelease ...`` and
``scripts/rollback.sh``'s entry point, its fast path included) run in this process against the in-memory target and
registry of tests/fakes.py: exit codes, the lines printed, aliases, tags, the audit trail and the journal.

They are what tests/integration/test_rollback_incidents.py checked with real servers, less what only real processes
show (a kill -9, a real restart, nginx, load), which stays there. A command that "dies" raises :class:`Crash` at a
scripted mutating call; when a command ends its process is gone, so an operation it left journaled names a dead
pid, as after a kill -9.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from release.audit import AuditLog
from release.journal import Journal, Operation
from release.outcome import Outcome, PromotionError
from release.states import PASSED_AGAINST_TAG, PASSED_TAG, ROLLED_BACK_TAG
from tests.fakes import (
    DEAD_PID,
    MODEL_NAME,
    Crash,
    FakeHttp,
    FakeRegistry,
    FakeTarget,
    Steps,
    World,
    before_locking,
    make_promoter,
)

REPO = Path(__file__).resolve().parents[2]
PROD = "production"
#: params.yaml overrides: one 50% canary step, short waits, no driven load, no Locust gate (as FAST_RELEASE does for
#: the real tests, scaled to a target that answers at once)
FAST = {
    "canary": {
        "steps": [50],
        "interval": "10ms",
        "min_requests": 15,
        "drive_load": False,
        "failure_limit": 0,
        "inconclusive_limit": 1,
    },
    "promotion": {
        "rollback_window": "10m",
        "ready_timeout": "200ms",
        "drain_timeout": "100ms",
        "rollback_lock_wait": "30s",
        "load_gate": False,
    },
}


@dataclass
class Run:
    """One command's exit code and output."""

    code: int
    out: str
    err: str

    @property
    def said(self) -> str:
        """stdout and stderr with whitespace runs made single spaces (the console folds long lines)."""
        return " ".join((self.out + "\n" + self.err).split())

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


@dataclass
class Desk:
    """A workspace as the on-call engineer sees it: its params.yaml and state folder, the servers (``world``) and
    the registry that every command of it reaches."""

    home: Path
    world: World
    registry: FakeRegistry
    bundle: Path
    steps: Steps | None = None  # the next commands' mutating calls (and where they die), when set
    kind: type[FakeTarget] = FakeTarget

    def target(self) -> FakeTarget:
        """The target a command builds (make_target): a view of the same servers."""
        if self.steps is not None:
            return self.kind(self.world, steps=self.steps)
        return self.kind(self.world)

    @property
    def journal(self) -> Journal:
        return Journal(self.home / ".mlrelease")

    def audit(self) -> list[dict[str, Any]]:
        return AuditLog(self.home / ".mlrelease").records()

    def mlrelease(self, *args: str) -> Run:
        """``mlrelease ARGS`` (the console script's app), run from the workspace."""
        from typer.testing import CliRunner

        from mlrelease.cli import app

        with self._command():
            result = CliRunner().invoke(app, list(args), catch_exceptions=False)
        return Run(result.exit_code, result.stdout, result.stderr)

    def rollback_sh(self, *args: str) -> Run:
        """``scripts/rollback.sh ARGS``: the fast path, then the full rollback command (what the script execs)."""
        from mlrelease.commands import fast_rollback

        out, err = io.StringIO(), io.StringIO()
        with self._command(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = fast_rollback.main(list(args))
        return Run(code, out.getvalue(), err.getvalue())

    def ok(self, *args: str) -> str:
        run = self.mlrelease(*args)
        assert run.code == 0, run
        return run.said

    @contextlib.contextmanager
    def _command(self) -> Iterator[None]:
        """Settings read afresh, and the process gone afterwards, however it ended (an operation it left in the
        journal names a dead pid, as after a kill -9)."""
        from mlrelease.core.settings import get_settings

        get_settings.cache_clear()
        try:
            yield
        finally:
            get_settings.cache_clear()
            op = self.journal.load().operation
            if op is not None and op.pid == os.getpid():
                self.journal.set_operation(op.model_copy(update={"pid": DEAD_PID}))


@pytest.fixture
def desk(tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> Desk:
    return make_desk(tmp_path / "home", bundle, monkeypatch)


def make_desk(home: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> Desk:
    """A fresh workspace at ``home`` whose commands reach a fresh fake world and registry (until ``monkeypatch``
    is undone)."""
    import httpx

    import deploy.targets
    import registry.versions

    home.mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in FAST.items():
        params[section] = {**params[section], **values}
    (home / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    world = World()
    found = Desk(home, world, FakeRegistry(bundle, versions=[str(v) for v in range(1, 7)]), bundle)
    http = FakeHttp(world)
    monkeypatch.setattr(httpx, "get", http.get)
    monkeypatch.setattr(httpx, "post", http.post)
    monkeypatch.setattr("release.staging.probe", http.probe)
    monkeypatch.setattr(deploy.targets, "make_target", lambda *_, **__: found.target())
    monkeypatch.setattr(registry.versions, "Registry", lambda *_, **__: found.registry)
    monkeypatch.chdir(home)
    monkeypatch.setenv("MLRELEASE_HOME", str(home))
    monkeypatch.setenv("MLRELEASE_BY", "oncall@example.org")  # else the actor is git's user.email (a process)
    for name in ("MLRELEASE_TARGET", "MLRELEASE_API_KEY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return found


# ----- scenarios and checks -----------------------------------------------------------------------------------------
def first_release(desk: Desk, version: str = "1") -> None:
    desk.ok("promote", "production", "--version", version, "--force", "--reason", "test: first release")


def promote_over(desk: Desk, version: str, previous: str) -> None:
    """Force ``version`` into production over ``previous``, which stays warm."""
    desk.ok("promote", "production", "--version", version, "--force", "--reason", f"test: {version} over {previous}")
    t = desk.target()
    assert (t.slot_version(PROD, "stable"), t.slot_version(PROD, "previous")) == (version, previous)
    assert t.weights(PROD) == {"stable": 100.0}


def production_with_warm_previous(desk: Desk) -> tuple[str, str]:
    """Version P then version A in production, A forced so that P stays warm as the previous version."""
    first_release(desk, "1")
    promote_over(desk, "2", "1")
    return "1", "2"


def answered_by(desk: Desk, rows: int = 4) -> set[str]:
    """The versions answering predictions sent through production's entry point."""
    import httpx

    entry = desk.target().entry_url(PROD)
    assert entry is not None
    answers = set()
    for _ in range(rows):
        resp = httpx.post(f"{entry}/v1/models/{MODEL_NAME}:predict", json={"instances": [[0.0] * 4]})
        answers.add(str(resp.json().get("model_version")) if resp.status_code == 200 else f"HTTP {resp.status_code}")
    return answers


def assert_all_on(desk: Desk, version: str, context: object = "") -> None:
    """All production traffic on ``version``: the target's weights and slots, the aliases, and the answers."""
    t = desk.target()
    where = f"weights {t.weights(PROD)}, slots {desk.world.snapshot()['slots'].get(PROD)}\n{context}"
    assert t.weights(PROD) == {"stable": 100.0}, where
    assert t.slot_version(PROD, "stable") == version and t.slot_problem(PROD, "stable") is None, where
    assert t.slot(PROD, "canary") is None, where
    assert (desk.registry.alias(PROD), desk.registry.alias("canary")) == (version, None), f"aliases\n{where}"
    assert answered_by(desk) == {version}, where


def journal_killed(desk: Desk, command: str, version: str, reason: str | None = None, **changes: object) -> None:
    """The state a promotion leaves when it is killed: its journal entry (its pid gone) plus ``changes``."""
    state = desk.journal.load()
    for key, value in changes.items():
        setattr(state, key, value)
    state.operation = Operation(command=command, version=version, pid=DEAD_PID, by="killed-in-test", reason=reason)
    desk.journal.save(state)


def killed_switch_to(desk: Desk, version: str) -> None:
    """`promote production` of a version that passed its canary, killed after its switch and before its renames:
    the version serves 100% from the canary slot while the stable slot still holds the one it replaces."""
    desk.registry.aliases["canary"] = version  # as its passed canary left it
    desk.registry.versions[version][PASSED_TAG["canary"]] = "true"
    t = desk.target()
    t.deploy(PROD, "canary", desk.bundle, version)
    t.set_weights(PROD, {"canary": 100.0})
    assert answered_by(desk) == {version}
    journal_killed(desk, "promote production", version)


def rollbacks_from(desk: Desk, version: str) -> list[dict[str, Any]]:
    """The rollback records away from ``version`` that moved something (not a run that found it done)."""
    return [
        r
        for r in desk.audit()
        if r["action"] == "rollback" and r["from_version"] == version and r["outcome"] != "already-done"
    ]


def assert_withdrawn(desk: Desk, version: str, to: str, records: int) -> None:
    """``version`` tagged rolled back, its canary pass withdrawn, and that many rollback records away from it."""
    tags = desk.registry.versions[version]
    assert tags.get(PASSED_TAG["canary"]) == "false" and "misbehaves" in tags.get(ROLLED_BACK_TAG, ""), tags
    back = rollbacks_from(desk, version)
    assert len(back) == records and {r["to_version"] for r in back} == {to}, back
    assert all("misbehaves" in r["reason"] for r in back), back


def before_the_recovery_lock(monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], None]) -> None:
    """Run ``meanwhile`` once, when a rollback that found a dead promotion has read the journal and asks for the lock
    to recover it: what another command does while this one waits for the lock."""
    import release.rollback

    before_locking(monkeypatch, release.rollback, meanwhile)


# ----- mistakes, and a canary when production has nowhere to go back to --------------------------------------------
def test_typos_and_a_rollback_with_nowhere_to_go_are_refused_and_leave_nothing_behind(desk: Desk) -> None:
    first_release(desk, "1")
    for typo in ("99", "abc"):
        wrong = desk.rollback_sh("--to", typo, "--reason", "typo")
        assert wrong.code == 2 and "is not registered" in wrong.err, wrong
        assert "registered versions:" in wrong.err and "nothing was changed" in wrong.said, wrong
        assert desk.journal.load().operation is None, "a refused rollback journaled an operation"
    promote_typo = desk.mlrelease("promote", "staging", "--version", "99")
    assert promote_typo.code == 2 and "is not registered" in promote_typo.err, promote_typo
    assert desk.journal.load().operation is None
    nothing = desk.rollback_sh()
    assert nothing.code == 2 and "no previous production version" in nothing.err, nothing
    assert_all_on(desk, "1")


def test_a_rollback_stops_a_running_canary_when_production_has_no_previous_version(desk: Desk) -> None:
    """The canary runs in its own thread (its own command), mid-analysis with a long interval; the rollback asks it
    to abort through the real abort request and lock, then records who stopped it."""
    first_release(desk, "1")
    desk.registry.aliases["staging"] = "3"
    canary = make_promoter(desk.home, FakeTarget(desk.world), desk.registry, interval=60.0)
    ended: list[BaseException] = []

    def run_canary() -> None:
        try:
            canary.promote_canary(None, None)
        except BaseException as exc:  # noqa: BLE001  # handed to the test thread
            ended.append(exc)

    thread = threading.Thread(target=run_canary, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while desk.target().weights(PROD).get("canary", 0) == 0 and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert desk.target().weights(PROD).get("canary", 0) > 0, f"the canary did not shift traffic: {ended}"
    rolled = desk.rollback_sh("--reason", "pager: canary errors")
    thread.join(timeout=60)
    assert rolled.code == 0 and "canary of version 3 stopped" in rolled.said, rolled
    assert len(ended) == 1 and isinstance(ended[0], PromotionError) and "aborted" in str(ended[0]).lower(), ended
    assert_all_on(desk, "1", rolled)
    aborted = [r for r in desk.audit() if r["action"] == "canary-rollback" and r["from_version"] == "3"]
    assert aborted and "abort" in aborted[-1]["reason"].lower(), aborted
    stopped = rollbacks_from(desk, "3")
    assert stopped and stopped[-1]["outcome"] == "canary stopped" and stopped[-1]["reason"] == "pager: canary errors"
    assert desk.journal.load().operation is None and not (desk.home / ".mlrelease" / "abort.request").exists()


def test_status_says_production_is_down_and_reconcile_restarts_it(desk: Desk, tmp_path: Path) -> None:
    first_release(desk, "1")
    desk.ok("status")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLRELEASE_HOME", str(elsewhere))
        mp.chdir(elsewhere)
        lost = desk.mlrelease("status")
    assert lost.code == 2 and "no mlrelease project" in lost.err, lost
    stable = desk.target().slot(PROD, "stable")
    assert stable is not None
    stable.alive = False  # its process died
    down = desk.mlrelease("status")
    assert down.code == 1 and "is not healthy" in down.said, down
    assert "restarted production/stable" in desk.ok("reconcile")
    desk.ok("status")
    assert "nothing to do" in desk.ok("reconcile")
    assert_all_on(desk, "1")


# ----- recovery of a promotion that died ----------------------------------------------------------------------------
def test_the_next_command_finishes_a_production_switch_that_died_before_its_alias(desk: Desk) -> None:
    """`promote production` killed after its switch, before its alias and history: the next command finishes it
    (it used to write it down as undone, the alias on the old version), as forced when its canary pass was
    measured against another stable version, with the killed command's reason."""
    p, a = production_with_warm_previous(desk)
    history = desk.journal.load().production_history
    assert history[-1] == a
    desk.registry.versions[a].update({PASSED_TAG["canary"]: "true", PASSED_AGAINST_TAG: "99"})
    journal_killed(desk, "promote production", a, "hotfix over a stale pass", production_history=history[:-1])
    desk.registry.aliases[PROD] = p
    said = desk.ok("reconcile")
    assert f"production: version {a} serves 100% of traffic" in said, said
    assert_all_on(desk, a, said)
    state = desk.journal.load()
    assert state.production_history[-1:] == [a] and state.operation is None
    finished = [r for r in desk.audit() if r["action"] == "promote" and r["to_version"] == a]
    assert "finished by recovery" in finished[-1]["reason"], finished
    assert "hotfix over a stale pass" in finished[-1]["reason"], finished
    assert finished[-1]["outcome"] == "forced", finished


def test_a_canary_that_died_with_its_stable_is_undone_and_stable_restarted(desk: Desk) -> None:
    """A `promote canary` that died with its machine, the stable slot dead too: the next command restarts stable
    and routes all traffic to it (it used to fail on the dead slot every time, until the state was edited by
    hand)."""
    p, a = production_with_warm_previous(desk)
    journal_killed(desk, "promote canary", p)
    stable = desk.target().slot(PROD, "stable")
    assert stable is not None
    stable.alive = False
    desk.world.weights[PROD] = {"stable": 90.0, "previous": 10.0}  # as a canary step had it (previous stands in)
    said = desk.ok("reconcile")
    assert "restarted production/stable" in said and "100% back on stable" in said, said
    assert_all_on(desk, a, said)
    assert desk.journal.load().operation is None
    undone = [r for r in desk.audit() if r["action"] == "recover"]
    assert undone and undone[-1]["outcome"] == "undone" and "promote canary" in undone[-1]["reason"], undone


def test_an_incident_rollback_after_a_killed_production_switch_withdraws_it_and_stops_there(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`promote production` of C killed after its switch, before its renames: C serves 100% from the canary slot.
    The on-call's rollback undoes C and stops there; it used to go on to P, stopping the healthy A and tagging it
    rolled back while C kept its canary pass."""
    p, a = production_with_warm_previous(desk)
    c, reason = "3", "test: the new version misbehaves"
    killed_switch_to(desk, c)
    preview = desk.rollback_sh("--dry-run")  # names the recovery first, and that the real run stops after it
    said = preview.said
    assert preview.code == 0, preview
    assert f"would first recover the interrupted `promote production` of version {c}" in said, said
    assert f"put production back on version {a} and withdraw version {c}" in said, said
    assert "nothing more to do after that" in said and "would move" not in said, said
    assert desk.journal.load().operation is not None and desk.target().weights(PROD) == {"canary": 100.0}, said

    # two on-calls at once, both finding the dead promotion before either has the lock: one undoes it and withdraws
    # version C, the other finds that done (both used to withdraw it and record it)
    other: list[Run] = []
    before_the_recovery_lock(monkeypatch, lambda: other.append(desk.rollback_sh("--reason", reason)))
    first = desk.rollback_sh("--reason", reason)
    runs = [other[0], first]
    assert [r.code for r in runs] == [0, 0], [str(r) for r in runs]
    assert "nothing more to do" in other[0].out, other[0]
    assert f"already rolled back from version {c} to {a}" in first.said, first
    assert_all_on(desk, a, runs)  # the canary alias included: gone
    assert desk.target().slot_version(PROD, "previous") == p
    assert ROLLED_BACK_TAG not in desk.registry.versions[a]
    assert_withdrawn(desk, c, a, records=1)
    found = [r for r in desk.audit() if r["outcome"] == "already-done"]  # the second on-call's reason is kept too
    assert [(r["from_version"], r["to_version"], r["reason"]) for r in found] == [(c, a, reason)], found
    again = desk.rollback_sh()  # a second run is harmless: it used to go on from A to P (and tag A rolled back)
    assert again.code == 0 and f"already rolled back from version {c} to {a}" in again.said, again
    assert_all_on(desk, a, again)

    # C canaried again and its switch killed again: the mark of the first time is no reason to skip withdrawing it
    killed_switch_to(desk, c)
    rolled = desk.rollback_sh("--reason", reason)
    assert rolled.code == 0 and "nothing more to do" in rolled.out, rolled
    assert_all_on(desk, a, rolled)
    assert_withdrawn(desk, c, a, records=2)

    # and once more, recovered meanwhile by another command (a CI retry, a reconcile) while the rollback waits for
    # the lock: that recovery withdraws nothing, so the rollback does (it used to plan from there and move on to P)
    killed_switch_to(desk, c)

    def ci_retry() -> None:
        from mlrelease.commands.release import build_promoter

        build_promoter(Path("params.yaml"), "ci-retry", False).recover(Outcome())
        assert desk.journal.load().operation is None and desk.target().weights(PROD) == {"stable": 100.0}

    before_the_recovery_lock(monkeypatch, ci_retry)
    rolled = desk.rollback_sh("--reason", reason)
    assert rolled.code == 0 and "nothing more to do" in rolled.out, rolled
    assert_all_on(desk, a, rolled)
    assert_withdrawn(desk, c, a, records=3)


def test_a_rollback_with_the_registry_down_moves_traffic_and_the_next_run_finishes(desk: Desk) -> None:
    """`promote production` of A killed after its switch, and the registry down: recovery cannot write A's alias,
    but the rollback still moves production to the warm P, then says what is left; run again once the registry
    answers, it finishes."""
    p, a = production_with_warm_previous(desk)
    history = desk.journal.load().production_history
    journal_killed(desk, "promote production", a, production_history=history[:-1], last_rollback=None)
    desk.registry.down = True
    rolled = desk.rollback_sh("--reason", "test: registry down too")
    assert rolled.code == 1 and "its alias could not be set" in rolled.said, rolled
    assert f"production traffic is on version {p}" in rolled.said, rolled
    assert answered_by(desk) == {p}
    op = desk.journal.load().operation
    assert op is not None and (op.command, op.from_version, op.version) == ("rollback", a, p), op
    desk.registry.down = False
    finished = desk.rollback_sh()  # the registry is back: the same rollback is finished
    assert finished.code == 0 and f"finishing the interrupted rollback from version {a} to {p}" in finished.said
    assert_all_on(desk, p, finished)
    back = rollbacks_from(desk, a)
    assert [(r["to_version"], r["reason"], r["outcome"]) for r in back] == [(p, "test: registry down too", "done")]
    assert desk.registry.versions[a][ROLLED_BACK_TAG] == "test: registry down too"


# ----- a rollback to a version that is not warm ---------------------------------------------------------------------
def test_a_cold_rollback_keeps_the_warm_previous_version_warm_whether_it_starts_or_not(desk: Desk) -> None:
    """When the cold version's server does not come up, production stays where it is, the rollback ends (it used to
    stay journaled, so every later rollback retried the same version and every `--to` and promotion was refused)
    and the warm previous version is still warm (it used to be stopped to make room). A canary that passed and
    waits at weight 0 is stopped to make room, and its alias goes with it (it used to stay, naming a canary
    nothing served). When it starts, it takes all traffic and the warm previous version is still there too."""
    p, a = production_with_warm_previous(desk)
    b, c = "3", "4"
    promote_over(desk, b, a)  # b serves, a is warm, p is cold
    desk.registry.aliases["staging"] = c
    desk.ok("promote", "canary")  # c passes and waits at weight 0 in the canary slot
    assert desk.target().slot_version(PROD, "canary") == c and desk.registry.alias("canary") == c
    warm = desk.target().slot(PROD, "previous")
    assert warm is not None and warm.version == a

    desk.world.fail_deploy.add(p)  # its server never becomes ready
    failed = desk.mlrelease("rollback", "--to", p, "--reason", "test: cold start fails")
    said = failed.said
    assert failed.code == 1, failed
    assert f"version {p} could not be started, so no traffic moved: production stays on version {b}" in said, said
    assert f"version {a} is still warm: run scripts/rollback.sh --to {a}" in said, said
    assert f"The canary of version {c}, waiting at weight 0, was stopped to make room for it, and its alias" in said
    assert desk.registry.alias("canary") is None and desk.target().slot_version(PROD, "canary") is None
    stopped = [r for r in desk.audit() if r.get("outcome") == "canary stopped"]
    assert stopped and stopped[-1]["from_version"] == c and f"start version {p}" in stopped[-1]["reason"], stopped
    assert desk.journal.load().operation is None
    assert_all_on(desk, b, said)
    assert desk.target().slot(PROD, "previous") is warm and warm.alive

    desk.world.fail_deploy.clear()
    said = desk.ok("rollback", "--to", p, "--reason", "test: cold start works")
    assert f"version {p} is not warm: starting it" in said and "cold switch" in said, said
    assert_all_on(desk, p, said)
    assert desk.target().slot(PROD, "previous") is warm and warm.alive, said
    again = desk.rollback_sh()  # the script again, as an on-call would: its fast path must not move on to a
    assert again.code == 0 and "nothing to do" in again.said, again
    assert_all_on(desk, p, again)

    said = desk.ok("rollback", "--to", a, "--reason", "test: back to the warm one")
    assert "warm switch" in said, said
    assert_all_on(desk, a, said)

    # c passed its canary against b; production has moved on since: that pass no longer lets c in without --force
    stale = desk.mlrelease("promote", "production", "--version", c)
    assert stale.code == 2, stale
    assert f"passed its canary against version {b}, but production now serves version {a}" in stale.said, stale
    assert_all_on(desk, a, stale)


# ----- canaries the analysis rolls back -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("behaviour", "because"),
    [
        ("rejects", ["client errors (4xx)", "changed input contract"]),  # answers today's clients 422
        ("divergent", ["prediction divergence", "chi-square p = "]),  # healthy answers, always the same class
    ],
)
def test_a_canary_the_analysis_fails_is_rolled_back_and_says_why(
    desk: Desk, behaviour: str, because: list[str]
) -> None:
    """Healthy by its 5xx, and still not production's: a changed input contract (the story's `contract` variant
    does it with a real server) and a canary that always predicts one class are rolled back, saying why."""
    _, a = production_with_warm_previous(desk)
    desk.registry.aliases["staging"] = "3"
    desk.world.behaviour["3"] = behaviour
    failed = desk.mlrelease("promote", "canary")
    assert failed.code == 1 and "rolled back" in failed.err, failed
    assert all(reason in failed.said for reason in because), failed
    assert_all_on(desk, a, failed)
    assert desk.registry.versions["3"][PASSED_TAG["canary"]] == "false"
    last = desk.audit()[-1]
    assert (last["action"], last["from_version"], last["outcome"]) == ("canary-rollback", "3", "rolled back")


# ----- a canary whose stable dies -----------------------------------------------------------------------------------
class StableDiesUnderTheCanary(FakeTarget):
    """The stable slot's process dies as soon as a canary step routes part of production's traffic away from it."""

    def set_weights(self, environment: str, weights: Any) -> None:
        super().set_weights(environment, weights)
        stable = self.slot(environment, "stable")
        if str(environment) == PROD and 0 < self.world.weights_of(environment).get("canary", 0) < 100 and stable:
            stable.alive = False


def test_a_canary_whose_stable_dies_is_dropped_and_stable_restarted(
    desk: Desk, caplog: pytest.LogCaptureFixture
) -> None:
    """Stable dies mid-canary: the analysis has nothing to compare with and stops the canary. Dropping it restarts
    stable first (shown as it happens); it used to fail on the dead stable and leave the canary it had just stopped
    for cause with all of production's traffic and its alias."""
    _, a = production_with_warm_previous(desk)
    desk.registry.aliases["staging"] = "3"
    desk.kind = StableDiesUnderTheCanary
    with caplog.at_level("WARNING"):
        dropped = desk.mlrelease("promote", "canary")
    assert dropped.code == 1 and "rolled back" in dropped.said, dropped
    assert any("reconciled: restarted production/stable" in r.getMessage() for r in caplog.records), caplog.text
    desk.kind = FakeTarget
    assert_all_on(desk, a, dropped)
    assert desk.journal.load().operation is None
    assert desk.registry.versions["3"][PASSED_TAG["canary"]] == "false"
    assert [r["action"] for r in desk.audit()][-1] == "canary-rollback"


# ----- a rollback killed part way -----------------------------------------------------------------------------------
def _rollback_run(desk: Desk, steps: Steps, reason: str) -> None:
    """scripts/rollback.sh over production A with P warm, its target and registry calls counted into ``steps``."""
    desk.steps, desk.registry.steps = steps, steps
    try:
        desk.rollback_sh("--reason", reason)
    finally:
        desk.steps, desk.registry.steps = None, None


def test_a_rollback_killed_at_any_step_is_finished_by_the_next_run(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scripts/rollback.sh killed at every mutating call in turn (its fast path's and the full command's, target
    and registry): the next run finishes the same rollback (traffic on P, A stopped, alias moved, verified, one
    record with the reason of the run that started it), and a third run has nothing to do."""
    clean = Steps()
    with monkeypatch.context() as mp:
        d = make_desk(tmp_path / "clean", bundle, mp)
        production_with_warm_previous(d)
        _rollback_run(d, clean, "clean")
        assert_all_on(d, "1")
    n = len(clean.calls)
    assert n >= 5, clean.calls
    failed = {}
    for k in range(1, n + 1):
        with monkeypatch.context() as mp:
            d = make_desk(tmp_path / f"k{k}", bundle, mp)
            p, a = production_with_warm_previous(d)
            killed_at = f"{clean.calls[k - 1][0]} (call {k} of {n})"
            with pytest.raises(Crash):
                _rollback_run(d, Steps(crash_at=k), "test: the killed run's reason")
            # the killed run's reason once it journaled its rollback (or even recorded it), else the re-run's
            started = d.journal.load().operation is not None or bool(rollbacks_from(d, a))
            try:
                second = d.rollback_sh("--reason", "test: the re-run's reason")
                assert second.code == 0 and "verified" in second.out, second
                assert_all_on(d, p, second)
                assert a not in {s.version for s in d.world.env(PROD).values()}, d.world.snapshot()
                assert d.journal.load().operation is None
                done = rollbacks_from(d, a)
                # the killed run's reason once it journaled its rollback, the re-run's joined to it (neither is
                # dropped); the re-run's own record when the killed run had finished all but its last step
                killed, rerun = "test: the killed run's reason", "test: the re-run's reason"
                reason = f"{killed}; also from oncall@example.org: {rerun}" if started else rerun
                found = [r for r in d.audit() if r["outcome"] == "already-done"]
                if found:
                    reason = killed
                    assert [(r["reason"], r["evidence"]["done_reason"]) for r in found] == [(rerun, killed)], found
                assert [(r["to_version"], r["outcome"], r["reason"]) for r in done] == [(p, "done", reason)], done
                third = d.rollback_sh()
                assert third.code == 0 and "nothing to do" in third.out, third
                assert_all_on(d, p, third)
            except AssertionError as exc:
                failed[killed_at] = str(exc).splitlines()[0][:300]
    assert not failed, f"scripts/rollback.sh killed at these calls was not finished by the next run: {failed}"


def test_a_rollback_killed_after_clearing_its_journal_lifts_its_expiry_hold_on_the_next_run(
    desk: Desk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = Steps()
    with monkeypatch.context() as mp:
        d = make_desk(tmp_path / "clean", desk.bundle, mp)
        production_with_warm_previous(d)
        _rollback_run(d, clean, "clean")
    assert clean.calls[-1] == ("hold_expiry", (None,)), clean.calls
    production_with_warm_previous(desk)
    with pytest.raises(Crash):
        _rollback_run(desk, Steps(crash_at=len(clean.calls)), "killed at the very end")
    assert desk.journal.load().operation is None
    assert desk.rollback_sh().code == 0
    assert desk.world.hold is None, desk.world.hold


# ----- the release story's refusals and no-ops ----------------------------------------------------------------------
def test_each_step_of_the_release_story_refuses_or_skips_what_it_must_and_says_what_next(desk: Desk) -> None:
    """The release story (tests/integration/test_release_story.py) with real servers runs each step once; what each
    command refuses, previews or skips on the way, with the exit code and the next step it names, is checked
    here."""
    desk.registry.aliases["candidate"] = "1"
    assert "alias staging" in desk.ok("promote", "staging", "--by", "alice")
    assert "nothing to do" in desk.ok("promote", "staging")  # re-running is a no-op

    # no production yet: the canary has nothing to compare with, and says what to do
    first = desk.mlrelease("promote", "canary")
    assert first.code == 2 and "first release" in first.err, first
    refused = desk.mlrelease("promote", "production", "--version", "1")
    assert refused.code == 2 and "has not passed canary" in refused.err, refused
    dry = desk.ok("promote", "production", "--version", "1", "--force", "--reason", "first", "--dry-run")
    assert "would switch" in dry and desk.registry.alias(PROD) is None, dry
    first_release(desk, "1")

    desk.registry.aliases["candidate"] = "2"
    desk.ok("promote", "staging")
    assert "passed" in desk.ok("promote", "canary")
    desk.ok("promote", "production")
    assert desk.registry.alias(PROD) == "2"
    assert "nothing to do" in desk.ok("promote", "production")  # a re-run of a finished move
    assert desk.target().slot_version(PROD, "previous") == "1"

    # a bad version that slipped through staging is rolled back by its canary; staging still holds it, which is
    # work left to do, not "nothing to do"
    desk.registry.aliases["staging"] = "3"
    desk.world.behaviour["3"] = "errors"
    bad = desk.mlrelease("promote", "canary")
    assert bad.code == 1 and "rolled back" in bad.err and "error rate" in bad.said, bad
    assert desk.registry.alias("canary") is None and desk.registry.alias(PROD) == "2"
    pending = desk.mlrelease("promote", "production")
    assert pending.code == 2 and "promote canary" in pending.err, pending

    # the incident: the warm previous version takes it at once; running it twice is harmless
    rolled = desk.rollback_sh("--reason", "pager: p99")
    assert rolled.code == 0 and "fast path, warm switch" in rolled.said, rolled
    again = desk.rollback_sh()
    assert again.code == 0 and "nothing to do" in again.out, again
    assert_all_on(desk, "1", again)

    # the version the incident rolled back does not go back to canary by default, aliases or not
    desk.registry.aliases["staging"] = "2"
    again = desk.mlrelease("promote", "canary")
    assert again.code == 2 and "was rolled back" in again.err, again
    direct = desk.mlrelease("promote", "production", "--version", "2")  # its canary pass went with the rollback
    assert direct.code == 2 and "has not passed canary" in direct.err, direct
    assert "canary pass withdrawn" in direct.said and "--force --reason" in direct.said, direct
    forced = desk.ok("promote", "canary", "--force", "--reason", "fixed config", "--dry-run")
    assert "canaried again: fixed config" in forced and "would canary" in forced, forced
