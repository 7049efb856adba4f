"""What the audit trail keeps of overrides and of concurrent rollbacks, through the real command line against the
fakes of tests/fakes.py (see test_release_incidents.py).

Every ``--force`` is recorded as ``forced`` with its reason, the same in the audit log, the registry's version tags
and ``mlrelease history`` (table and ``--json``). Two rollbacks started at once each say truthfully what they did
(one rolls back; the other finds it under way, done, or finishes it) and neither reason is dropped. The two
commands' interleaving is played through the journal and the lock in this one process: no process is started.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from release.fast_rollback import FastSwitch, switch
from release.states import PASSED_AGAINST_TAG, PASSED_TAG
from tests.fakes import DEAD_PID, before_locking, make_promoter
from tests.unit.test_release_incidents import (
    PROD,
    Desk,
    first_release,
    journal_killed,
    make_desk,
    production_with_warm_previous,
)

ONCALL = "oncall@example.org"  # MLRELEASE_BY of the desk's commands
TESTER = "tester@example.org"  # the actor of make_promoter's promoters


@pytest.fixture
def desk(tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> Desk:
    return make_desk(tmp_path / "home", bundle, monkeypatch)


def audit_tags(desk: Desk, version: str, action: str) -> list[dict[str, Any]]:
    """The audit records set as registry tags on ``version`` for ``action``, oldest first."""
    tags = desk.registry.versions[version]
    keys = sorted(k for k in tags if k.startswith("mlrelease.audit.") and k.endswith(f".{action}"))
    return [json.loads(tags[k]) for k in keys]


def history(desk: Desk) -> tuple[str, list[dict[str, Any]]]:
    """``mlrelease history`` as one line of text, and ``history --json`` as records."""
    table = desk.ok("history")
    listed = desk.mlrelease("history", "--json")
    assert listed.code == 0, listed
    records = [json.loads(line) for line in listed.out.splitlines() if line.strip()]
    return table, records


def assert_forced_everywhere(desk: Desk, version: str, action: str, reason: str) -> None:
    """The last ``action`` record on ``version`` says forced with ``reason`` in the log, the tags and history."""
    logged = [r for r in desk.audit() if r["action"] == action and r["to_version"] == version]
    tagged = audit_tags(desk, version, action)
    table, listed = history(desk)
    shown = [r for r in listed if r["action"] == action and r["to_version"] == version]
    for where, found in (("audit log", logged), ("registry tags", tagged), ("history --json", shown)):
        assert found and found[-1]["outcome"] == "forced" and reason in found[-1]["reason"], (where, found)
    assert "forced" in table and reason in table, table


# ----- every --force is recorded as forced -------------------------------------------------------------------------
def test_a_first_release_forced_into_production_is_forced_everywhere(desk: Desk) -> None:
    said = desk.ok("promote", "production", "--version", "1", "--force", "--reason", "first-release-42")
    assert "--force: the canary is skipped; recorded as forced: first-release-42" in said, said
    assert_forced_everywhere(desk, "1", "promote", "first-release-42")
    assert desk.audit()[-1]["evidence"]["canary_passed"] is False


def test_a_force_over_a_canary_pass_that_holds_is_still_recorded_forced(desk: Desk) -> None:
    """The operator chose to override: the record says so, and its evidence that the pass held."""
    first_release(desk, "1")
    desk.registry.aliases["canary"] = "2"
    desk.registry.versions["2"].update({PASSED_TAG["canary"]: "true", PASSED_AGAINST_TAG: "1"})
    said = desk.ok("promote", "production", "--force", "--reason", "hotfix-7", "--dry-run")
    assert "--force: version 2 needs no override (its canary pass holds); would be recorded as forced: hotfix-7" in (
        said
    ), said
    desk.ok("promote", "production", "--force", "--reason", "hotfix-7")
    assert_forced_everywhere(desk, "2", "promote", "hotfix-7")
    assert desk.audit()[-1]["evidence"]["canary_passed"] is True
    desk.registry.aliases["canary"] = "3"
    desk.registry.versions["3"].update({PASSED_TAG["canary"]: "true", PASSED_AGAINST_TAG: "2"})
    desk.ok("promote", "production", "--reason", "approved-in-review")  # no --force: done, its reason kept
    last = desk.audit()[-1]
    assert (last["to_version"], last["outcome"], last["reason"]) == ("3", "done", "approved-in-review")


def test_a_forced_canary_of_a_version_never_rolled_back_is_recorded_forced(desk: Desk) -> None:
    first_release(desk, "1")
    desk.registry.aliases["staging"] = "2"
    said = desk.ok("promote", "canary", "--force", "--reason", "ticket-9")
    assert "--force: version 2 needs no override; recorded as forced all the same: ticket-9" in said, said
    assert_forced_everywhere(desk, "2", "alias", "ticket-9")
    assert_forced_everywhere(desk, "2", "canary-passed", "ticket-9")


def test_a_reason_without_force_is_recorded_on_staging_and_canary(desk: Desk) -> None:
    first_release(desk, "1")
    desk.registry.aliases["candidate"] = "2"
    desk.ok("promote", "staging", "--reason", "nightly-build")
    staged = desk.audit()[-1]
    assert (staged["action"], staged["outcome"]) == ("promote", "done")
    assert staged["reason"] == "smoke and load gates passed; reason: nightly-build"
    desk.ok("promote", "canary", "--reason", "weekly-release")
    started, passed = [r for r in desk.audit() if r["action"] in ("alias", "canary-passed")][-2:]
    assert (started["outcome"], started["reason"]) == ("done", "canary started, reason: weekly-release")
    assert passed["outcome"] == "done" and passed["reason"].endswith("; reason: weekly-release")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("promote", "production", "--version", "1", "--force"), "--force needs --reason: say why the canary is"),
        (("promote", "canary", "--force", "--reason", "  "), "--force needs --reason: say why this canary is forced"),
        (("promote", "staging", "--force", "--reason", "x"), "promote staging has no --force: its smoke test"),
    ],
)
def test_a_force_without_a_reason_or_on_staging_is_a_one_line_refusal(
    desk: Desk, args: tuple[str, ...], says: str
) -> None:
    desk.registry.aliases.update(candidate="1", staging="1")
    refused = desk.mlrelease(*args)
    assert refused.code == 2 and says in refused.said, refused
    assert len(refused.err.strip().splitlines()) == 1 and "Traceback" not in refused.said, refused
    assert desk.audit() == [] and desk.journal.load().operation is None


def test_a_forced_production_finished_by_recovery_is_recorded_forced(desk: Desk) -> None:
    """`promote production --force` killed after its switch: the next command finishes it as the command would have
    recorded it, forced with its reason, even though the version's canary pass held."""
    p, a = production_with_warm_previous(desk)
    history_ = desk.journal.load().production_history
    desk.registry.versions[a].update({PASSED_TAG["canary"]: "true", PASSED_AGAINST_TAG: p})
    journal_killed(desk, "promote production", a, "forced-hotfix", production_history=history_[:-1])
    state = desk.journal.load()
    assert state.operation is not None
    state.operation = state.operation.model_copy(update={"forced": True, "from_version": p})
    desk.journal.save(state)
    assert "(forced: forced-hotfix)" in desk.ok("status")
    desk.ok("reconcile")
    finished = [r for r in desk.audit() if r["action"] == "promote" and r["to_version"] == a][-1]
    assert finished["outcome"] == "forced" and "its reason: forced-hotfix" in finished["reason"], finished
    assert_forced_everywhere(desk, a, "promote", "forced-hotfix")


def test_an_undone_forced_canary_keeps_its_reason_on_the_recover_record(desk: Desk) -> None:
    first_release(desk, "1")
    journal_killed(desk, "promote canary", "2", "ticket-11")
    state = desk.journal.load()
    assert state.operation is not None
    state.operation = state.operation.model_copy(update={"forced": True})
    desk.journal.save(state)
    desk.ok("reconcile")
    undone = desk.audit()[-1]
    assert (undone["action"], undone["outcome"]) == ("recover", "undone")
    assert undone["reason"].endswith("; its reason (forced): ticket-11"), undone


# ----- two rollbacks at once ---------------------------------------------------------------------------------------
def when_asking_for_the_lock(monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], None]) -> None:
    """Run ``meanwhile`` once, when a rollback has planned and asks for the lock to switch: what another rollback
    does while this one waits for it."""
    import release.session

    before_locking(monkeypatch, release.session, meanwhile)


def fast_path_of(desk: Desk, reason: str, pid: int) -> FastSwitch:
    """scripts/rollback.sh's fast path as the process ``pid`` ran it: the rollback journaled (with its reason) and
    production's traffic on the warm previous version; the rest is its full command's (or another run's) to do."""
    moved = switch(desk.home / ".mlrelease", desk.target(), None, TESTER, reason, time.time())
    assert isinstance(moved, FastSwitch), moved
    state = desk.journal.load()
    assert state.operation is not None
    state.operation = state.operation.model_copy(update={"pid": pid})
    desk.journal.save(state)
    return moved


def rollback_records(desk: Desk) -> list[tuple[str, str, str, str]]:
    """(by, outcome, from -> to, reason) of every rollback record, oldest first."""
    return [
        (r["by"], r["outcome"], f"{r['from_version']} -> {r['to_version']}", r["reason"])
        for r in desk.audit()
        if r["action"] == "rollback"
    ]


def test_a_rollback_that_finds_another_done_while_it_waited_says_so_and_keeps_its_reason(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A and B at the same moment: B plans first, A takes the lock and rolls back while B waits for it. B used to
    say nothing of A, and its reason was lost."""
    p, a = production_with_warm_previous(desk)
    first: list[Any] = []
    when_asking_for_the_lock(monkeypatch, lambda: first.append(desk.rollback_sh("--reason", "A: p99 alarm")))
    second = desk.mlrelease("rollback", "--reason", "B: error spike")
    assert first[0].code == 0 and "fast path, warm switch" in first[0].said, first[0]
    assert second.code == 0, second
    assert f"already rolled back from version {a} to {p} at " in second.said, second
    assert f"by {ONCALL} (pid {os.getpid()}, reason: A: p99 alarm); nothing to do" in second.said, second
    assert rollback_records(desk) == [
        (ONCALL, "done", f"{a} -> {p}", "A: p99 alarm"),
        (ONCALL, "already-done", f"{a} -> {p}", "B: error spike"),
    ]
    assert desk.audit()[-1]["evidence"]["done_reason"] == "A: p99 alarm"
    table, listed = history(desk)
    assert "already-done" in table and listed[-1]["reason"] == "B: error spike", table


def test_a_rollback_that_finds_another_under_way_waits_and_says_so(desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    """A's fast path has journaled its rollback and moved the traffic; B starts, sees it under way (A's process
    runs), waits for the lock while A's full command finishes it, and says who did it. Both used to print
    "finishing the interrupted rollback", and B's reason was lost."""
    p, a = production_with_warm_previous(desk)
    other = os.getppid()  # a process that runs and is not this one: A's, as B sees it
    moved = fast_path_of(desk, "A: p99 alarm", other)

    def a_finishes() -> None:
        """A's full command takes the lock first (in this process: the journal names it so)."""
        state = desk.journal.load()
        assert state.operation is not None
        state.operation = state.operation.model_copy(update={"pid": os.getpid()})
        desk.journal.save(state)
        out = make_promoter(desk.home, desk.target(), desk.registry).rollback(None, "A: p99 alarm", moved)
        assert out.exit_code == 0 and not any("finishing" in line for line in out.lines), out.lines

    when_asking_for_the_lock(monkeypatch, a_finishes)
    second = desk.mlrelease("rollback", "--reason", "B: error spike")
    assert second.code == 0, second
    assert (
        f"another rollback from version {a} to {p} is under way (pid {other}, by {TESTER}, reason: A: p99 alarm): "
        "waiting for it"
    ) in second.said, second
    assert f"already rolled back from version {a} to {p} at " in second.said, second
    assert "finishing" not in second.said, second
    assert rollback_records(desk) == [
        (TESTER, "done", f"{a} -> {p}", "A: p99 alarm"),
        (ONCALL, "already-done", f"{a} -> {p}", "B: error spike"),
    ]
    assert desk.journal.load().operation is None


def test_a_rollback_that_finishes_one_still_running_joins_its_reason_and_the_first_says_who_finished_it(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's fast path moved the traffic; before A's full command takes the lock, B (another process) takes it and
    finishes A's rollback: one record, A's reason with B's joined. A's full command then says B finished it,
    and adds no record of its own."""
    import release.rollback

    p, a = production_with_warm_previous(desk)
    moved = fast_path_of(desk, "A: p99 alarm", os.getpid())  # A is this process
    with monkeypatch.context() as mp:  # B is another one
        mp.setattr(release.rollback, "os", SimpleNamespace(getpid=lambda: DEAD_PID))
        second = desk.mlrelease("rollback", "--reason", "B: error spike")
    assert second.code == 0, second
    assert f"finishing the rollback from version {a} to {p} that another run journaled (pid {os.getpid()}" in (
        second.said
    ), second
    assert "it is still running" in second.said and "interrupted" not in second.said, second
    joined = f"A: p99 alarm; also from {ONCALL}: B: error spike"
    assert rollback_records(desk) == [(TESTER, "done", f"{a} -> {p}", joined)]
    assert desk.audit()[-1]["evidence"]["finished_by"] == ONCALL

    out = make_promoter(desk.home, desk.target(), desk.registry).rollback(None, "A: p99 alarm", moved)
    said = " ".join(out.lines)
    assert out.exit_code == 0, out.lines
    assert f"this command's rollback from version {a} to {p} (its fast path moved the traffic) was finished by " in (
        said
    ), said
    assert f"finished by {ONCALL} meanwhile; nothing left to do" in said, said
    assert len(rollback_records(desk)) == 1  # A's reason is on the record already


def test_a_rerun_that_finishes_an_interrupted_rollback_joins_its_reason(desk: Desk) -> None:
    p, a = production_with_warm_previous(desk)
    fast_path_of(desk, "A: p99 alarm", DEAD_PID)  # A was killed after its fast path
    again = desk.rollback_sh("--reason", "B: still paging")
    assert again.code == 0, again
    assert f"finishing the interrupted rollback from version {a} to {p} (pid {DEAD_PID}, by {TESTER})" in again.said
    assert rollback_records(desk) == [
        (TESTER, "done", f"{a} -> {p}", f"A: p99 alarm; also from {ONCALL}: B: still paging")
    ]
    third = desk.rollback_sh()  # no reason given: nothing changed and nothing to keep, so no record
    assert third.code == 0 and "nothing to do" in third.said, third
    fourth = desk.rollback_sh("--reason", "C: paged again")  # a reason given is kept, though nothing changed
    assert fourth.code == 0 and f"already rolled back from version {a} to {p} at " in fourth.said, fourth
    assert rollback_records(desk) == [
        (TESTER, "done", f"{a} -> {p}", f"A: p99 alarm; also from {ONCALL}: B: still paging"),
        (ONCALL, "already-done", f"{a} -> {p}", "C: paged again"),
    ]


def test_a_rollback_that_gives_up_waiting_for_the_lock_keeps_its_reason(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another rollback held the lock longer than `promotion.rollback_lock_wait`: exit 3 names it, and the audit
    log keeps this run's reason."""
    from mlrelease.core.locking import PromotionLocked, promotion_lock
    from release.rollback import rollback

    desk = make_desk(tmp_path / "home", bundle, monkeypatch)
    production_with_warm_previous(desk)
    promoter = make_promoter(desk.home, desk.target(), desk.registry, rollback_lock_wait=0.1)
    with promotion_lock(desk.home / ".mlrelease", "rollback", "alice"), pytest.raises(PromotionLocked) as held:
        rollback(promoter, None, "B: error spike")
    assert "`rollback` by alice" in str(held.value)
    last = desk.audit()[-1]
    assert (last["action"], last["outcome"], last["reason"]) == ("rollback", "gave up waiting", "B: error spike")
    assert "`rollback` by alice" in last["evidence"]["lock"]
    assert desk.target().weights(PROD) == {"stable": 100.0}
