"""A refusal never leaves a dead promotion's traffic in place, and an override's reason is recorded.

A `promote canary` killed at a canary step left the canary on production traffic; a re-run refused for another
reason (the version was rolled back before and needs --force) exited before recovering it. And `promote canary
--force --reason` printed its reason once: the audit log said "done" and lost it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from release.outcome import Outcome, PromotionError
from release.states import ROLLED_BACK_TAG, Command
from tests.fakes import DEAD_PID, Crash, Steps
from tests.unit.test_release_matrix import PROD, Rig, canaried_v2, make_rig, released_v2, staged_v2


@pytest.fixture
def rig(tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    return make_rig(tmp_path / "home", bundle, monkeypatch)


def _rolled_back_v2_staged_again(rig: Rig) -> None:
    """Version 2 released, rolled back (tagged), and staged again: a canary of it needs --force --reason."""
    released_v2(rig)
    rig.promoter().rollback(None, "p99 over budget")
    assert ROLLED_BACK_TAG in rig.registry.versions["2"]
    rig.promoter().promote_staging("2")


def _killed_at_a_canary_step(rig: Rig) -> None:
    """`promote canary` killed once the canary carries a share of production traffic."""
    steps = Steps()
    rig.target.steps = steps
    shifted: list[object] = []

    def die_on_traffic(name: str, *args: object) -> None:
        """A crash happens before the call it interrupts: die at the first change after the canary got a share."""
        if shifted:
            raise Crash("killed at a canary step")
        Steps.step(steps, name, *args)
        if name == "set_weights" and args[0] == PROD and dict(args[1]).get("canary", 0) > 0:  # type: ignore[call-overload]
            shifted.append(args[1])

    steps.step = die_on_traffic  # type: ignore[method-assign]
    with pytest.raises(Crash):
        rig.promoter().promote_canary(None, None, force=True, reason="the fix is in the data, not the model")
    rig.target = rig.target.revived()
    op = rig.journal.load().operation
    assert op is not None and op.command == Command.PROMOTE_CANARY
    rig.journal.set_operation(op.model_copy(update={"pid": DEAD_PID}))
    assert rig.target.weights(PROD).get("canary", 0) > 0  # the dead canary carries traffic


def test_a_refused_canary_rerun_first_takes_the_dead_canary_off_traffic(rig: Rig) -> None:
    _rolled_back_v2_staged_again(rig)
    _killed_at_a_canary_step(rig)
    with pytest.raises(PromotionError) as refused:
        rig.promoter().promote_canary(None, None)  # no --force this time
    assert refused.value.exit_code == 2 and "--force --reason" in str(refused.value)
    assert rig.target.weights(PROD) == {"stable": 100.0} and rig.target.slot(PROD, "canary") is None
    assert rig.journal.load().operation is None
    assert rig.registry.alias("canary") is None
    recovered = [r for r in rig.audit() if r["action"] == "recover"]
    assert recovered and "promote canary" in recovered[-1]["reason"]


def test_a_refused_production_rerun_first_recovers_too(rig: Rig) -> None:
    staged_v2(rig)
    _killed_at_a_canary_step(rig)
    with pytest.raises(PromotionError) as refused:
        rig.promoter().promote_production(None, False, None)  # the killed canary never passed
    assert refused.value.exit_code == 2
    assert rig.target.weights(PROD) == {"stable": 100.0} and rig.journal.load().operation is None


def test_a_dry_run_recovers_nothing(rig: Rig) -> None:
    staged_v2(rig)
    _killed_at_a_canary_step(rig)
    weights = rig.target.weights(PROD)
    promoter = rig.promoter()
    promoter.dry_run = True
    out = promoter.promote_production("2", True, "look only")
    assert any(line.startswith("would switch production") for line in out.lines), out.lines
    assert rig.target.weights(PROD) == weights and rig.journal.load().operation is not None


def test_a_forced_canary_records_its_reason_and_says_forced(rig: Rig) -> None:
    _rolled_back_v2_staged_again(rig)
    out: Outcome = rig.promoter().promote_canary(None, None, force=True, reason="the fix is in the data")
    assert any("canaried again: the fix is in the data" in line for line in out.lines), out.lines
    records = [r for r in rig.audit() if r["to_version"] == "2" and r["action"] in ("alias", "canary-passed")]
    started, passed = records[-2], records[-1]
    assert (started["action"], started["outcome"]) == ("alias", "forced")
    assert started["reason"] == "canary started, forced: the fix is in the data"
    assert (passed["action"], passed["outcome"]) == ("canary-passed", "forced")
    assert passed["reason"].endswith("; forced: the fix is in the data")


def test_an_ordinary_canary_is_recorded_done(rig: Rig) -> None:
    canaried_v2(rig)
    started, passed = [r for r in rig.audit() if r["action"] in ("alias", "canary-passed")][-2:]
    assert (started["outcome"], started["reason"]) == ("done", "canary started")
    assert passed["outcome"] == "done" and "forced" not in passed["reason"]


# ----- every command recovers a dead promotion before it refuses anything ------------------------------------------
REFUSED_AFTER_RECOVERY = [
    ("mlrelease", ("promote", "staging", "--version", "99"), "is not registered"),
    ("mlrelease", ("promote", "staging", "--force", "--reason", "skip the gates"), "has no --force"),
    ("mlrelease", ("promote", "canary", "--version", "3"), "canary always takes the version on staging"),
    ("mlrelease", ("promote", "canary", "--force"), "--force needs --reason"),
    ("mlrelease", ("promote", "canary", "--steps", "60"), "invalid canary settings"),
    ("mlrelease", ("promote", "canary"), "was rolled back from production"),
    ("mlrelease", ("promote", "production", "--version", "2", "--force"), "--force needs --reason"),
    ("mlrelease", ("promote", "production", "--version", "2"), "has not passed canary"),
    ("mlrelease", ("rollback", "--to", "99", "--reason", "typo"), "is not registered"),
    ("rollback.sh", ("--to", "99", "--reason", "typo"), "is not registered"),
]


@pytest.mark.parametrize(
    ("how", "args", "says"), REFUSED_AFTER_RECOVERY, ids=[f"{h} {' '.join(a)}" for h, a, _ in REFUSED_AFTER_RECOVERY]
)
def test_every_command_recovers_a_dead_canary_before_it_refuses(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, how: str, args: tuple[str, ...], says: str
) -> None:
    """A `promote canary` killed with 10% of production's traffic on its canary: whatever the next command refuses
    (exit 2), the canary is off traffic and stopped, its alias gone and the recovery recorded first."""
    from tests.unit.test_release_incidents import first_release, journal_killed, make_desk

    desk = make_desk(tmp_path / "home", bundle, monkeypatch)
    first_release(desk, "1")
    desk.registry.aliases.update(candidate="2", staging="2", canary="2")
    desk.registry.versions["2"][ROLLED_BACK_TAG] = "an earlier incident"
    target = desk.target()
    target.deploy(PROD, "canary", desk.bundle, "2")
    target.set_weights(PROD, {"stable": 90.0, "canary": 10.0})
    journal_killed(desk, "promote canary", "2")
    refused = desk.rollback_sh(*args) if how == "rollback.sh" else desk.mlrelease(*args)
    assert refused.code == 2 and says in refused.said, refused
    assert desk.target().weights(PROD) == {"stable": 100.0} and desk.target().slot(PROD, "canary") is None, refused
    assert desk.journal.load().operation is None and desk.registry.alias("canary") is None
    recovered = [r for r in desk.audit() if r["action"] == "recover"]
    assert len(recovered) == 1 and recovered[0]["outcome"] == "undone", recovered
    assert "promote canary" in recovered[0]["reason"]
