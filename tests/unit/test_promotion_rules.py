"""Promotion rules that need no server: which version a rollback goes back to, strict params, durations."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import ValidationError

from deploy.targets.local import LocalTarget
from deploy.targets.local.state import DeployState, Environment, Slot
from mlrelease.core.params import PromotionParams
from release.bookkeeping import previous_version
from release.fast_rollback import fast_goal
from release.journal import JournalState, Operation, RollbackMark
from release.states import Command

if TYPE_CHECKING:
    from collections.abc import Callable

    from release.promoter import Promoter


def test_rollback_prefers_the_warm_previous_slot() -> None:
    state = JournalState(production_history=["1", "2", "3"])
    assert previous_version(state, "3", warm="1") == "1"


def test_rollback_without_warm_slot_uses_history() -> None:
    state = JournalState(production_history=["1", "2", "3"])
    assert previous_version(state, "3", warm=None) == "2"
    assert previous_version(JournalState(production_history=["4"]), "4", warm=None) is None


def test_rollback_never_goes_back_to_the_version_it_rolled_back_from() -> None:
    state = JournalState(
        production_history=["1", "2", "1"], last_rollback=RollbackMark(from_version="2", to_version="1", at=time.time())
    )
    assert previous_version(state, "1", warm=None) is None


def test_promotion_params_parse_durations_and_refuse_typos() -> None:
    params = PromotionParams(rollback_window="30m", ready_timeout="90s")
    assert params.rollback_window == 1800 and params.ready_timeout == 90
    with pytest.raises(ValidationError):
        PromotionParams(rollback_windw="30m")
    with pytest.raises(ValidationError):
        PromotionParams(rollback_window="later")


def _production(weights: dict[str, float], expires_in: float = 600.0) -> DeployState:
    """Production serving version 2 (stable) with version 1 warm in the previous slot."""
    slots = {
        "stable": Slot(version="2", port=1, pid=1, model_name="m", bundle_dir="/b2"),
        "previous": Slot(
            version="1", port=2, pid=2, model_name="m", bundle_dir="/b1", expires_at=time.time() + expires_in
        ),
    }
    return DeployState(environments={"production": Environment(slots=slots, weights=weights)})


def _target(tmp_path: Path, state: DeployState) -> LocalTarget:
    """A local target whose state file says ``state`` (no process runs: the fast path only reads it)."""
    target = LocalTarget(tmp_path)
    target.store.save(state)
    return target


def test_fast_rollback_applies_only_to_a_warm_previous_version(tmp_path: Path) -> None:
    assert fast_goal(JournalState(), _target(tmp_path, _production({"stable": 100})), None) == ("2", "1")
    found = fast_goal(JournalState(), _target(tmp_path, _production({"stable": 95, "canary": 5})), "1")
    assert found == ("2", "1")


@pytest.mark.parametrize(  # states are built when the test runs: a rollback window counted from collection time
    ("state", "to", "reason"),  # would expire before a long suite got to this test
    [
        (lambda: (JournalState(), DeployState()), None, "no warm previous"),
        (lambda: (JournalState(), _production({"stable": 100})), "7", "--to 7 is not the warm previous version"),
        (lambda: (JournalState(), _production({"stable": 100}, expires_in=-1)), None, "expired"),
        (lambda: (JournalState(), _production({"previous": 100})), None, "already on the previous version"),
        (
            lambda: (
                JournalState(operation=Operation(command="promote canary", version="3", pid=9, by="x")),
                _production({"stable": 100}),
            ),
            None,
            "interrupted `promote canary`",
        ),
        (  # a cold rollback to 2 kept 1 warm: running the script again must not move production once more
            lambda: (
                JournalState(last_rollback=RollbackMark(from_version="3", to_version="2", at=time.time())),
                _production({"stable": 100}),
            ),
            None,
            "already rolled back from version 3 to 2",
        ),
    ],
)
def test_fast_rollback_hands_everything_else_to_the_full_command(
    tmp_path: Path, state: Callable[[], tuple[JournalState, DeployState]], to: str | None, reason: str
) -> None:
    journal, deployed = state()
    found = fast_goal(journal, _target(tmp_path, deployed), to)
    assert isinstance(found, str) and reason in found


def _promoter(home: Path, tracking_uri: str | None = None) -> Promoter:
    """A promoter on an empty local deployment state and an unused registry under ``home`` (or at
    ``tracking_uri``)."""
    from mlrelease.core.params import CanaryParams
    from mlrelease.core.settings import Settings
    from registry.versions import Registry
    from release.promoter import Promoter

    settings = Settings(home=home, mlflow_tracking_uri=tracking_uri)
    return Promoter(
        settings=settings,
        model_name="m",
        canary_params=CanaryParams(),
        params=PromotionParams(),
        target=LocalTarget(settings.state_dir),
        registry=Registry("m", settings),
        by="tester",
    )


def _local(promoter: Promoter) -> LocalTarget:
    """The promoter's target, which these tests build as the local one."""
    assert isinstance(promoter.target, LocalTarget)
    return promoter.target


def test_an_interrupted_rollback_blocks_other_commands_until_it_is_finished(tmp_path: Path) -> None:
    from release.outcome import Outcome, PromotionError

    promoter = _promoter(tmp_path)
    interrupted = Operation(
        command=Command.ROLLBACK, version="1", pid=4242, by="oncall", from_version="2", reason="p99"
    )
    state = promoter.journal.load()
    state.operation = interrupted
    promoter.journal.save(state)
    with pytest.raises(
        PromotionError, match="rollback to version 1 by oncall .* was interrupted; run `scripts/rollback"
    ):
        promoter.recover(Outcome())
    assert promoter.recover(Outcome(), resume_rollback=True) == interrupted  # the rollback finishes it instead
    assert promoter.journal.load().operation == interrupted


def test_the_fast_path_leaves_arguments_it_cannot_read_to_the_full_command() -> None:
    from mlrelease.commands.fast_rollback import _args

    parsed = _args(["--to", "3", "--reason", "p99 alarm"])
    assert parsed is not None and (parsed.to, parsed.reason) == ("3", "p99 alarm")
    assert _args(["--t", "5"]) is None  # no abbreviations: click would refuse it, so must the fast path
    assert _args(["--reason", "-x"]) is None
    assert _args(["--bogus"]) is None


def test_the_command_start_is_rollback_shs_own_clock_when_it_is_plausible(monkeypatch: pytest.MonkeyPatch) -> None:
    """psutil's process start is relative to a boot time in whole seconds: up to a second off."""
    import time

    import psutil

    from release.fast_rollback import STARTED_VAR, process_started

    kernel = psutil.Process().create_time()
    monkeypatch.setenv(STARTED_VAR, f"{kernel - 0.4:.6f}".replace(".", ","))  # a comma locale's EPOCHREALTIME
    assert process_started() == pytest.approx(kernel - 0.4)
    monkeypatch.setenv(STARTED_VAR, f"{time.time() - 3600:.6f}")  # another command's stamp, exported long ago
    assert process_started() == kernel
    for junk in ("", "soon"):
        monkeypatch.setenv(STARTED_VAR, junk)
        assert process_started() == kernel


def test_an_interrupted_reconcile_leaves_nothing_for_the_next_command_to_undo(tmp_path: Path) -> None:
    """A promotion's journal entry makes the next command put traffic back on stable; a reconcile's must not
    (it would end a canary that the reconcile only meant to keep running)."""
    from release.outcome import Outcome

    promoter = _promoter(tmp_path)
    with pytest.raises(KeyboardInterrupt), promoter.operation(Command.RECONCILE, "-", Outcome()):
        raise KeyboardInterrupt  # Ctrl-C while a slot restarts
    assert promoter.journal.load().operation is None
    with pytest.raises(KeyboardInterrupt), promoter.operation(Command.PROMOTE_CANARY, "3", Outcome()):
        raise KeyboardInterrupt
    assert promoter.journal.load().operation is not None  # a promotion stays journaled, for recover()


def test_a_reconcile_journaled_by_an_earlier_version_is_cleared_without_recovery(tmp_path: Path) -> None:
    from release.outcome import Outcome

    promoter = _promoter(tmp_path)
    promoter.journal.set_operation(Operation(command="reconcile", version="-", pid=4242, by="oncall"))
    out = Outcome()
    assert promoter.recover(out) is None
    assert out.lines == [] and promoter.journal.load().operation is None


def test_an_interrupted_staging_switch_without_a_stable_slot_does_not_block_the_next_promotion(tmp_path: Path) -> None:
    """Killed between recording staging's weight on the new slot and renaming it: no earlier staging slot to
    go back to, and `deploy` refuses to replace a slot with weight, so the passed slot becomes stable."""
    from release.outcome import Outcome

    promoter = _promoter(tmp_path)
    state = DeployState()
    staging = state.env("staging")
    staging.slots["pending"] = Slot(version="2", port=1, pid=2**22 + 7, model_name="m", bundle_dir="/b2")
    staging.weights = {"pending": 100}
    _local(promoter).store.save(state)
    promoter.journal.set_operation(Operation(command="promote staging", version="2", pid=4242, by="ci"))
    out = Outcome()
    assert promoter.recover(out) is None
    assert promoter.journal.load().operation is None
    after = _local(promoter).store.load()
    assert {k: s.version for k, s in after.env("staging").slots.items()} == {"stable": "2"}
    assert after.env("staging").weights == {"stable": 100.0}
    assert any("promote it again" in line for line in out.lines), out.lines


def test_a_rollback_that_only_stops_a_canary_says_so(tmp_path: Path) -> None:
    from release.outcome import Outcome
    from release.rollback import rollback_goal

    promoter = _promoter(tmp_path)
    _local(promoter).store.save(_production({"stable": 100}))
    promoter.journal.save(JournalState(last_rollback=RollbackMark(from_version="3", to_version="2", at=time.time())))
    out = Outcome()
    assert rollback_goal(promoter, None, out, canary="4") == ("2", None)
    assert out.lines == [
        "already rolled back from version 3 to 2; production needs no move, only the canary of version 4"
    ]
    out = Outcome()
    assert rollback_goal(promoter, None, out) == ("2", None)
    assert out.lines == ["already rolled back from version 3 to 2; nothing to do"]


@pytest.mark.integration  # starts a process
def test_rollback_sh_with_a_bad_setting_names_it_without_a_traceback(tmp_path: Path) -> None:
    """The fast path read the settings outside any error handling: a bad MLRELEASE_* variable gave a traceback."""
    import os
    import subprocess

    script = Path(__file__).resolve().parents[2] / "scripts" / "rollback.sh"
    env = {**os.environ, "MLRELEASE_HOME": str(tmp_path), "MLRELEASE_RATE_LIMIT_BURST": "0"}
    run = subprocess.run([str(script), "--reason", "t"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "rollback failed" in run.stderr and "rate_limit_burst" in run.stderr, run.stderr


def test_after_a_fast_switch_a_rerun_is_asked_for_only_while_the_rollback_is_unfinished(tmp_path: Path) -> None:
    """A rollback that finished its steps but failed its final check still said "run scripts/rollback.sh again to
    finish", which then only answered "nothing to do"."""
    from release.fast_rollback import FastSwitch, after_failure
    from release.journal import Journal

    moved = FastSwitch("2", "1", 0.4, 0.01)
    store = Journal(tmp_path)
    store.save(JournalState(operation=Operation(command="rollback", version="1", pid=1, by="t", from_version="2")))
    assert "run scripts/rollback.sh again to finish" in after_failure(moved, tmp_path)
    store.save(JournalState())
    said = after_failure(moved, tmp_path)
    assert "again" not in said and "steps are done" in said and "version 1" in said, said


def test_an_interrupted_staging_promotion_past_its_switch_is_finished_not_reported_undone(tmp_path: Path) -> None:
    """Killed after its gates passed and its slot became stable, before the alias: recovery used to record the
    promotion "undone" while staging went on serving the new version and the alias named the old one (which the
    next `promote canary` then took)."""
    from release.outcome import Outcome
    from release.states import STAGING

    promoter = _promoter(tmp_path)
    client = promoter.registry.client
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source=(tmp_path / "bundle").as_uri())
    client.set_registered_model_alias("m", STAGING, "1")
    state = DeployState()
    staging = state.env(STAGING)
    staging.slots["stable"] = Slot(version="2", port=1, pid=2**22 + 7, model_name="m", bundle_dir="/b2")
    staging.weights = {"stable": 100}
    op = Operation(command="promote staging", version="2", pid=2**22 + 9, by="ci")
    died_early = state.model_copy(deep=True)  # a re-run of 2 (an earlier recovery made its slot stable without the
    # alias: "promote it again") killed after deploying its new slot, still pending: undone, not finished
    died_early.env(STAGING).slots["pending"] = Slot(version="2", port=3, pid=2**22 + 8, model_name="m", bundle_dir="/b")
    _local(promoter).store.save(died_early)
    promoter.journal.set_operation(op)
    assert promoter.recover(Outcome()) is None
    assert promoter.registry.alias(STAGING) == "1" and promoter.audit.records()[-1]["outcome"] == "undone"
    assert "pending" not in _local(promoter).store.load().env(STAGING).slots
    promoter.audit.path.unlink()

    _local(promoter).store.save(state)
    promoter.journal.set_operation(op)
    out = Outcome()
    assert promoter.recover(out) is None
    assert promoter.journal.load().operation is None
    assert promoter.registry.alias(STAGING) == "2" and promoter.registry.tags("2")["mlrelease.staging_passed"] == "true"
    records = promoter.audit.records()
    assert [(r["action"], r["outcome"], r["to_version"]) for r in records] == [("promote", "done", "2")], records
    assert "finished by recovery" in records[-1]["reason"] and any("alias staging -> 2" in x for x in out.lines)


def test_a_canary_pass_holds_only_against_the_stable_version_it_was_measured_with() -> None:
    """A pass against version 2 said nothing once a rollback or a forced release put version 1 or 4 in production,
    yet `promote production --version V` took it without --force."""
    from release.bookkeeping import stale_pass
    from release.states import PASSED_AGAINST_TAG, PASSED_TAG

    passed = {PASSED_TAG["canary"]: "true", PASSED_AGAINST_TAG: "2"}
    assert stale_pass(passed, "2") is None
    assert stale_pass(passed, "1") == "version 2, but production now serves version 1"
    assert stale_pass({PASSED_TAG["canary"]: "true"}, "1") is None  # a pass recorded before the tag existed
    assert stale_pass({**passed, PASSED_TAG["canary"]: "false"}, "1") is None  # no pass: another message


def test_a_cold_rollback_with_the_registry_down_ends_unjournaled_with_nothing_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No warm version and no registry: fetching the bundle failed after the rollback was journaled, so it stayed
    journaled and every later command (a `--to` a warm version included) was refused until the registry came back."""
    from deploy.targets.local import LocalTarget
    from mlrelease.core.net import free_port
    from release.outcome import PromotionError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    promoter = _promoter(tmp_path, f"http://127.0.0.1:{free_port()}")
    target = promoter.target
    assert isinstance(target, LocalTarget)
    stable = Slot(version="2", port=1, pid=2**22 + 3, model_name="m", bundle_dir="/b2")
    env = Environment(slots={"stable": stable}, weights={"stable": 100})
    target.store.save(DeployState(environments={"production": env}))
    promoter.journal.save(JournalState(production_history=["1", "2"]))
    with pytest.raises(PromotionError, match="bundle could not be fetched from the registry.*no traffic moved"):
        promoter.rollback(None, "test")
    after = target.store.load()
    assert promoter.journal.load().operation is None
    assert after.env("production").slots == {"stable": stable} and after.env("production").weights == {"stable": 100}


def test_a_done_staging_switch_with_the_registry_down_is_not_recorded_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stable already the new version, no pending slot: the switch is done whatever the registry says; with it
    down, recovery says the alias is left and what to run, and records no "undone"."""
    from mlrelease.core.net import free_port
    from registry.client import brief_requests
    from release.outcome import Outcome
    from release.states import STAGING

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    promoter = _promoter(tmp_path, f"http://127.0.0.1:{free_port()}")
    state = DeployState()
    state.env(STAGING).slots["stable"] = Slot(version="2", port=1, pid=2**22 + 7, model_name="m", bundle_dir="/b2")
    state.env(STAGING).weights = {"stable": 100}
    _local(promoter).store.save(state)
    promoter.journal.set_operation(Operation(command="promote staging", version="2", pid=2**22 + 9, by="ci"))
    out = Outcome()
    with brief_requests():
        assert promoter.recover(out) is None
    assert promoter.journal.load().operation is None
    assert [r["outcome"] for r in promoter.audit.records()] == ["alias not set"]
    assert any("mlrelease promote staging --version 2" in line for line in out.lines), out.lines


def test_a_rollback_withdraws_only_its_own_abort_request(tmp_path: Path) -> None:
    """A rollback with nothing to do used to be free to remove the request another rollback, still waiting for the
    lock, had made; and it must make none when it never waits (a promotion would stop for nothing)."""
    from release.journal import ABORT_FILE, AbortRequest

    theirs = tmp_path / ABORT_FILE
    theirs.touch()  # another rollback waits for the lock
    mine = AbortRequest(theirs)
    mine.withdraw()
    assert theirs.exists()
    mine.make()
    mine.withdraw()
    assert not theirs.exists() and not mine.made
    AbortRequest(tmp_path / "missing" / ABORT_FILE).make()  # no state folder: nothing runs, nothing to ask
    assert not (tmp_path / "missing").exists()


def test_a_dry_run_previews_a_dead_canary_as_the_real_run_will_find_it(tmp_path: Path) -> None:
    """Recovery stops a dead canary before the rollback plans: with no previous production version the real run
    then has nothing to go back to. The dry run said "would stop the canary" instead."""
    from release.outcome import Outcome, PromotionError
    from release.rollback import preview_rollback

    promoter = _promoter(tmp_path)
    slots = {
        "stable": Slot(version="2", port=1, pid=1, model_name="m", bundle_dir="/b2"),
        "canary": Slot(version="3", port=2, pid=2, model_name="m", bundle_dir="/b3"),
    }
    state = DeployState(environments={"production": Environment(slots=slots, weights={"stable": 95, "canary": 5})})
    _local(promoter).store.save(state)
    promoter.journal.set_operation(Operation(command="promote canary", version="3", pid=2**22 + 3, by="ci"))
    out = Outcome()
    with pytest.raises(PromotionError, match="no previous production version"):
        preview_rollback(promoter, None, out)
    assert out.lines == ["would first recover the interrupted `promote canary` of version 3 (pid 4194307 is gone)"]
    assert promoter.journal.load().operation is not None  # a dry run changes nothing
