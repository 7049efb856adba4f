"""The promotion and rollback state machine against an in-memory target (tests/fakes.py): the happy path, every
command killed at every mutating call followed by the recovery that comes next, a failing and an inconclusive
canary, a failed smoke test, and rollback idempotence. No process, no socket, no server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from release.audit import AuditLog
from release.journal import Journal
from release.outcome import Outcome, PromotionError
from release.promoter import Promoter
from release.states import PASSED_TAG, ROLLED_BACK_TAG, Command
from tests.fakes import (
    DEAD_PID,
    Crash,
    FakeHttp,
    FakeRegistry,
    FakeTarget,
    Steps,
    World,
    make_promoter,
)

PROD, STAGING = "production", "staging"


@dataclass
class Rig:
    """One workspace: its state folder, the servers (world), the registry and the HTTP they answer."""

    home: Path
    world: World
    target: FakeTarget
    registry: FakeRegistry

    def promoter(self, target: FakeTarget | None = None, **params: Any) -> Promoter:
        return make_promoter(self.home, target or self.target, self.registry, **params)

    @property
    def journal(self) -> Journal:
        return Journal(self.home / ".mlrelease")

    def audit(self) -> list[dict[str, Any]]:
        return AuditLog(self.home / ".mlrelease").records()

    def actions(self) -> list[str]:
        return [r["action"] for r in self.audit()]

    def serving(self) -> dict[str, Any]:
        """What serves and what the registry says serves: equal between two moments means nothing moved."""
        t = self.target
        return {
            "production": t.slot_version(PROD, "stable"),
            "production_weights": t.weights(PROD),
            "staging": t.slot_version(STAGING, "stable"),
            "aliases": {k: v for k, v in self.registry.aliases.items() if k in (PROD, STAGING)},
        }


def make_rig(home: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    import httpx

    world = World()
    http = FakeHttp(world)
    monkeypatch.setattr(httpx, "get", http.get)
    monkeypatch.setattr(httpx, "post", http.post)
    monkeypatch.setattr("release.staging.probe", http.probe)
    registry = FakeRegistry(bundle)
    home.mkdir(parents=True, exist_ok=True)
    return Rig(home, world, FakeTarget(world), registry)


@pytest.fixture
def rig(tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    return make_rig(tmp_path / "home", bundle, monkeypatch)


# ----- scenarios: each brings the rig to the state a command starts from --------------------------------------
def first_release(rig: Rig) -> None:
    """Version 1 staged and forced into production (the first release)."""
    rig.registry.aliases["candidate"] = "1"
    rig.promoter().promote_staging(None)
    rig.promoter().promote_production("1", True, "first release")


def staged_v2(rig: Rig) -> None:
    first_release(rig)
    rig.registry.aliases["candidate"] = "2"
    rig.promoter().promote_staging(None)


def canaried_v2(rig: Rig) -> None:
    staged_v2(rig)
    rig.promoter().promote_canary(None, None)


def released_v2(rig: Rig) -> None:
    canaried_v2(rig)
    rig.promoter().promote_production(None, False, None)


def assert_settled(rig: Rig) -> None:
    """The invariants after any command or recovery: all production traffic on the live stable slot, no canary
    weight, nothing journaled, the aliases naming what serves."""
    t = rig.target
    assert rig.journal.load().operation is None
    assert t.weights(PROD) == {"stable": 100.0}
    assert t.slot_problem(PROD, "stable") is None
    assert rig.registry.alias(PROD) == t.slot_version(PROD, "stable")
    if rig.registry.alias(STAGING) is not None:
        assert rig.registry.alias(STAGING) == t.slot_version(STAGING, "stable")
    assert t.slot(STAGING, "pending") is None


# ----- the happy path --------------------------------------------------------------------------------------------
def test_happy_path_staging_canary_production_rollback(rig: Rig) -> None:
    rig.registry.aliases["candidate"] = "1"
    out = rig.promoter().promote_staging(None)
    assert rig.registry.alias(STAGING) == "1" and rig.target.slot_version(STAGING, "stable") == "1"
    assert rig.registry.versions["1"][PASSED_TAG["staging"]] == "true"
    assert rig.actions() == ["promote"] and rig.audit()[-1]["evidence"]["smoke"]["status"] == 200
    assert "alias staging -> 1" in out.lines[-1]

    rig.promoter().promote_production("1", True, "first release")
    assert_settled(rig)
    last = rig.audit()[-1]
    assert (last["action"], last["outcome"], last["to_version"]) == ("promote", "forced", "1")
    assert rig.journal.load().production_history == ["1"]

    rig.registry.aliases["candidate"] = "2"
    rig.promoter().promote_staging(None)
    assert rig.registry.alias(STAGING) == "2" and rig.audit()[-1]["from_version"] == "1"

    out = rig.promoter().promote_canary(None, None)
    assert rig.registry.alias("canary") == "2"
    assert rig.target.slot_version(PROD, "canary") == "2" and rig.target.weights(PROD) == {"stable": 100.0}
    tags = rig.registry.versions["2"]
    assert tags[PASSED_TAG["canary"]] == "true" and tags["mlrelease.canary_passed_against"] == "1"
    steps = [r["weights"] for r in rig.audit() if r["action"] == "traffic"]
    assert steps == [{"stable": 90.0, "canary": 10.0}, {"stable": 50.0, "canary": 50.0}]
    assert rig.actions()[-1] == "canary-passed"
    assert_settled(rig)

    rig.promoter().promote_production(None, False, None)
    assert_settled(rig)
    assert rig.registry.alias(PROD) == "2" and rig.registry.alias("canary") is None
    assert rig.target.slot_version(PROD, "previous") == "1" and rig.target.slot(PROD, "previous").expires_at
    assert rig.journal.load().production_history == ["1", "2"]
    assert rig.audit()[-1]["outcome"] == "done" and rig.audit()[-1]["from_version"] == "1"

    out = rig.promoter().rollback(None, "incident 42")
    assert out.exit_code == 0, out.lines
    assert_settled(rig)
    assert rig.registry.alias(PROD) == "1" and rig.target.slot(PROD, "previous") is None
    assert rig.registry.versions["2"][ROLLED_BACK_TAG] == "incident 42"
    assert rig.registry.versions["2"][PASSED_TAG["canary"]] == "false"
    mark = rig.journal.load().last_rollback
    assert (mark.from_version, mark.to_version) == ("2", "1")
    last = rig.audit()[-1]
    assert (last["action"], last["from_version"], last["to_version"], last["reason"]) == (
        "rollback",
        "2",
        "1",
        "incident 42",
    )
    assert any(line.startswith("verified:") for line in out.lines)
    assert rig.world.hold is None and any(rig.world.holds)  # held during the rollback, lifted after
    # every audit record is also a tag on the versions it touched
    assert any(key.startswith("mlrelease.audit.") for key in rig.registry.versions["2"])


# ----- every command x every interruption point --------------------------------------------------------------
RUNS: dict[str, tuple[Callable[[Rig], None], Callable[[Promoter], Outcome]]] = {
    "promote staging": (first_release, lambda p: p.promote_staging(None)),
    "promote canary": (staged_v2, lambda p: p.promote_canary(None, None)),
    "promote production": (canaried_v2, lambda p: p.promote_production(None, False, None)),
    "rollback": (released_v2, lambda p: p.rollback(None, "incident")),
}


def _prepare(home: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> Rig:
    rig = make_rig(home, bundle, monkeypatch)
    setup, _ = RUNS[command]
    if command == "promote staging":
        setup(rig)
        rig.registry.aliases["candidate"] = "2"
    else:
        setup(rig)
    return rig


def _run(rig: Rig, command: str, steps: Steps, registry_too: bool) -> Outcome:
    rig.target.steps = steps
    rig.registry.steps = steps if registry_too else None
    try:
        return RUNS[command][1](rig.promoter())
    finally:
        rig.registry.steps = None


def _clean(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, command: str, registry_too: bool
) -> tuple[list[tuple[str, tuple[Any, ...]]], dict[str, Any], dict[str, Any]]:
    """Mutating calls of a clean run, and what serves before and after it."""
    rig = _prepare(tmp_path / "clean", bundle, monkeypatch, command)
    before = rig.serving()
    steps = Steps()
    _run(rig, command, steps, registry_too)
    assert_settled(rig)
    return list(steps.calls), before, rig.serving()


def _recover(rig: Rig, command: str) -> Outcome:
    """What comes next after a kill -9: the journal's process is gone; a rollback is re-run (other commands are
    refused meanwhile), any promotion is recovered by the next command (here a reconcile)."""
    op = rig.journal.load().operation
    if op is not None:
        rig.journal.set_operation(op.model_copy(update={"pid": DEAD_PID}))
    rig.target = rig.target.revived()
    if command == "rollback":
        if op is not None:
            with pytest.raises(PromotionError) as refused, rig.promoter().operation(Command.RECONCILE, "-", Outcome()):
                pass
            assert refused.value.exit_code == 3
            assert rig.journal.load().operation is not None
        return rig.promoter().rollback(None, "incident")
    out = Outcome()
    with rig.promoter().operation(Command.RECONCILE, "-", out):
        pass
    return out


def _crash_and_recover(
    tmp_path: Path,
    bundle: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    k: int,
    registry_too: bool,
    before: dict[str, Any],
    after: dict[str, Any],
) -> None:
    rig = _prepare(tmp_path / f"k{k}", bundle, monkeypatch, command)
    steps = Steps(crash_at=k)
    with pytest.raises(Crash):
        _run(rig, command, steps, registry_too)
    journaled = rig.journal.load().operation
    seen = len(rig.audit())
    _recover(rig, command)
    assert_settled(rig)
    end = rig.serving()
    new = rig.audit()[seen:]
    if command == "rollback":
        assert end == after, "a re-run rollback finishes the same rollback"
        done = [
            r
            for r in rig.audit()
            if r["action"] == "rollback" and (r["from_version"], r["to_version"], r["outcome"]) == ("2", "1", "done")
        ]
        assert len(done) == 1, f"one rollback record, by the run that finished it: {done}"
        found = [r for r in rig.audit() if r["action"] == "rollback" and r["outcome"] == "already-done"]
        assert len(found) <= 1 and all(r["reason"] == "incident" for r in found), found  # killed after its record
        mark = rig.journal.load().last_rollback
        assert mark is not None and (mark.from_version, mark.to_version) == ("2", "1")
        return
    assert end in (before, after), f"neither undone nor finished: {end}"
    assert rig.target.slot(PROD, "canary") is None or rig.target.slot_version(PROD, "canary") == "2"
    if journaled is None:
        assert end == before and not new, "nothing was journaled: nothing may have moved"
        return
    if end == before:
        undone = [r for r in new if r["action"] == "recover" and r["outcome"] == "undone"]
        assert undone and command in undone[0]["reason"], new
    else:
        assert [r for r in new if r["action"] == "promote"], f"finished but not audited as such: {new}"
    if command == "promote canary":
        assert rig.registry.alias("canary") is None and rig.target.slot(PROD, "canary") is None


def _matrix(tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, command: str, registry_too: bool) -> int:
    steps_of_clean, before, after = _clean(tmp_path, bundle, monkeypatch, command, registry_too)
    n = len(steps_of_clean)
    assert n >= 3
    failed = {}
    for k in range(1, n + 1):
        try:
            _crash_and_recover(tmp_path, bundle, monkeypatch, command, k, registry_too, before, after)
        except AssertionError as exc:
            failed[k] = str(exc).splitlines()[0][:300]
    assert not failed, f"`{command}` killed at these mutating calls (of {n}) was not recovered: {failed}"
    return n


@pytest.mark.parametrize("command", list(RUNS))
def test_every_target_interruption_is_recovered(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    _matrix(tmp_path, bundle, monkeypatch, command, registry_too=False)


@pytest.mark.parametrize("command", list(RUNS))
def test_every_target_or_registry_interruption_is_recovered(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    _matrix(tmp_path, bundle, monkeypatch, command, registry_too=True)


# ----- the canary's judgement ----------------------------------------------------------------------------------
@pytest.mark.parametrize("behaviour", ["errors", "no-metrics", "divergent"])
def test_failing_canary_is_dropped(rig: Rig, behaviour: str) -> None:
    staged_v2(rig)
    rig.world.behaviour["2"] = behaviour
    with pytest.raises(PromotionError, match="rolled back"):
        rig.promoter().promote_canary(None, None)
    assert_settled(rig)
    assert rig.target.slot(PROD, "canary") is None and rig.registry.alias("canary") is None
    assert rig.registry.versions["2"][PASSED_TAG["canary"]] == "false"
    last = rig.audit()[-1]
    assert (last["action"], last["from_version"], last["to_version"]) == ("canary-rollback", "2", "1")
    assert last["outcome"] == "rolled back" and last["weights"] == {"stable": 100}


def test_inconclusive_canary_is_never_a_pass(rig: Rig) -> None:
    staged_v2(rig)
    rig.world.behaviour["2"] = "silent"  # the canary serves no predictions: no data
    with pytest.raises(PromotionError, match="inconclusive"):
        rig.promoter().promote_canary(None, None)
    assert_settled(rig)
    assert rig.target.slot(PROD, "canary") is None and rig.registry.alias("canary") is None
    assert rig.registry.versions["2"].get(PASSED_TAG["canary"]) != "true"
    assert rig.actions()[-1] == "canary-rollback"


def test_stable_without_metrics_makes_the_canary_inconclusive(rig: Rig) -> None:
    staged_v2(rig)
    rig.world.behaviour["1"] = "no-metrics"  # nothing to compare the canary with
    with pytest.raises(PromotionError, match="inconclusive"):
        rig.promoter().promote_canary(None, None)
    assert_settled(rig)
    assert "canary-passed" not in rig.actions()


# ----- staging's gates -----------------------------------------------------------------------------------------
def test_smoke_failure_stops_pending_and_leaves_staging_unchanged(rig: Rig) -> None:
    first_release(rig)
    rig.registry.aliases["candidate"] = "2"
    rig.world.behaviour["2"] = "errors"  # its predictions answer 500
    before = rig.serving()
    with pytest.raises(PromotionError, match="staging gate failed"):
        rig.promoter().promote_staging(None)
    assert rig.serving() == before and rig.registry.alias(STAGING) == "1"
    assert rig.target.slot(STAGING, "pending") is None
    assert rig.journal.load().operation is None
    last = rig.audit()[-1]
    assert (last["action"], last["outcome"], last["to_version"]) == ("promote", "failed", "2")
    assert PASSED_TAG["staging"] not in rig.registry.versions["2"]


def test_tampered_bundle_is_refused_before_anything_starts(rig: Rig) -> None:
    first_release(rig)
    rig.registry.aliases["candidate"] = "2"
    rig.registry.tampered.add("2")
    before, calls = rig.serving(), len(rig.target.calls)
    with pytest.raises(PromotionError, match="refused"):
        rig.promoter().promote_staging(None)
    assert rig.serving() == before
    assert not [c for c in rig.target.calls[calls:] if c[0] == "deploy"]
    assert rig.actions()[-1] == "integrity-check"


# ----- rollback ------------------------------------------------------------------------------------------------
def test_second_rollback_is_already_rolled_back(rig: Rig) -> None:
    released_v2(rig)
    rig.promoter().rollback(None, "incident")
    before, records, calls = rig.serving(), len(rig.audit()), len(rig.target.calls)
    out = rig.promoter().rollback(None, "incident again")
    assert out.exit_code == 0
    said = "already rolled back from version 2 to 1 at "
    assert any(said in line and "by tester@example.org" in line and "reason: incident)" in line for line in out.lines)
    assert rig.serving() == before
    assert not [c for c in rig.target.calls[calls:] if c[0] in ("set_weights", "rename", "stop", "deploy")]
    (again,) = rig.audit()[records:]  # only this run's own record: nothing changed, its reason kept
    assert (again["action"], again["outcome"], again["reason"]) == ("rollback", "already-done", "incident again")
    assert (again["from_version"], again["to_version"], again["evidence"]["done_reason"]) == ("2", "1", "incident")


def test_rollback_to_unregistered_version_changes_nothing(rig: Rig) -> None:
    released_v2(rig)
    before, records, calls = rig.serving(), len(rig.audit()), len(rig.target.calls)
    with pytest.raises(PromotionError) as exc:
        rig.promoter().rollback("99", "typo")
    assert exc.value.exit_code == 2 and "not registered" in str(exc.value)
    assert rig.serving() == before and len(rig.audit()) == records
    assert rig.target.calls[calls:] == [] and rig.journal.load().operation is None


def _killed_rollback(rig: Rig) -> None:
    """Version 2 in production, 1 warm; a rollback killed once all traffic is on 1 (journaled, not finished)."""
    released_v2(rig)
    with pytest.raises(Crash):
        _run(rig, "rollback", Steps(crash_at=3), registry_too=False)  # hold, set_weights done; dies at `stop`
    op = rig.journal.load().operation
    assert op is not None and op.command == Command.ROLLBACK
    rig.journal.set_operation(op.model_copy(update={"pid": DEAD_PID}))
    rig.target = rig.target.revived()
    assert rig.target.weights(PROD) == {"previous": 100.0}


def test_journaled_rollback_refuses_other_commands_until_rerun(rig: Rig) -> None:
    _killed_rollback(rig)
    rig.registry.aliases["candidate"] = "3"
    with pytest.raises(PromotionError) as refused:
        rig.promoter().promote_staging(None)
    assert refused.value.exit_code == 3 and "rollback" in str(refused.value)
    with pytest.raises(PromotionError) as refused, rig.promoter().operation(Command.RECONCILE, "-", Outcome()):
        pass
    assert refused.value.exit_code == 3
    assert rig.target.slot_version(STAGING, "pending") is None and rig.registry.alias(STAGING) == "2"
    assert rig.journal.load().operation is not None and rig.world.hold is not None  # warm slots kept meanwhile
    out = rig.promoter().rollback(None, "finish it")
    assert any("finishing the interrupted rollback from version 2 to 1" in line for line in out.lines), out.lines
    assert_settled(rig)
    assert rig.registry.alias(PROD) == "1" and rig.world.hold is None
    last = rig.audit()[-1]
    assert last["action"] == "rollback" and last["evidence"]["previous_run_pid"] == DEAD_PID
    # the reason of the run that started it, then the one of the run that finished it: neither is dropped
    assert last["reason"] == "incident; also from tester@example.org: finish it"
    assert last["by"] == "tester@example.org" and last["evidence"]["finished_by"] == "tester@example.org"


def test_journaled_rollback_refuses_promote_production(rig: Rig) -> None:
    _killed_rollback(rig)
    with pytest.raises(PromotionError) as refused:
        rig.promoter().promote_production(None, False, None)
    assert refused.value.exit_code == 3


def test_staging_killed_after_its_alias_is_finished_not_undone(rig: Rig) -> None:
    first_release(rig)
    rig.registry.aliases["candidate"] = "2"
    steps = Steps()
    steps.crash_at = 0  # counted below: die at the staging_passed tag

    def die_at_tag(name: str, *args: Any) -> None:
        Steps.step(steps, name, *args)
        if name == "set_tag" and args[1] == PASSED_TAG["staging"]:
            raise Crash("killed before the staging_passed tag")

    steps.step = die_at_tag  # type: ignore[method-assign]
    with pytest.raises(Crash):
        _run(rig, "promote staging", steps, registry_too=True)
    assert rig.registry.alias(STAGING) == "2" and rig.target.slot_version(STAGING, "stable") == "2"
    _recover(rig, "promote staging")
    assert_settled(rig)
    new = rig.audit()[-1]
    assert (new["action"], new["to_version"], new["outcome"]) == ("promote", "2", "done"), new
    assert rig.registry.versions["2"][PASSED_TAG["staging"]] == "true"


def test_rollback_cold_to_an_older_registered_version(rig: Rig) -> None:
    released_v2(rig)
    rig.target.stop(PROD, "previous")  # its rollback window is over
    out = rig.promoter().rollback("1", "back to 1 cold")
    assert out.exit_code == 0, out.lines
    assert_settled(rig)
    assert rig.target.slot_version(PROD, "stable") == "1"
    assert any("not warm" in line for line in out.lines)
    assert rig.audit()[-1]["evidence"]["warm"] is False


@pytest.mark.parametrize("command", ["promote canary", "promote production"])
def test_incident_rollback_after_a_killed_promotion_settles(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """The on-call's rollback is the command after the kill -9: it recovers the dead promotion first, then leaves
    production settled on one live version with nothing journaled, whatever point the promotion died at."""
    calls, _, _ = _clean(tmp_path, bundle, monkeypatch, command, registry_too=False)
    failed = {}
    for k in range(1, len(calls) + 1):
        rig = _prepare(tmp_path / f"r{k}", bundle, monkeypatch, command)
        with pytest.raises(Crash):
            _run(rig, command, Steps(crash_at=k), registry_too=False)
        op = rig.journal.load().operation
        if op is not None:
            rig.journal.set_operation(op.model_copy(update={"pid": DEAD_PID}))
        rig.target = rig.target.revived()
        try:
            try:
                out = rig.promoter().rollback(None, "incident during a promotion")
            except PromotionError as exc:  # recovery put production back on 1, the only version it ever had
                assert exc.exit_code == 2 and "no previous production version" in str(exc), exc
                out = Outcome()
            assert_settled(rig)
            if op is not None and command == "promote canary":  # a canary under way does not survive it
                assert rig.target.slot(PROD, "canary") is None and rig.registry.alias("canary") is None
            if op is not None:
                assert {"recover", "rollback", "promote"} & set(rig.actions()[-3:]), out.lines
        except (AssertionError, PromotionError) as exc:
            failed[k] = f"{calls[k - 1][0]}: {str(exc).splitlines()[0][:200]}"
    assert not failed, f"rollback after `{command}` killed at these calls was not settled: {failed}"
