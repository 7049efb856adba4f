"""The first second of an incident rollback: production traffic onto the warm previous version, before anything
slow (the registry client, the audit trail, typer, rich) is imported.

``scripts/rollback.sh`` runs this module. When production's previous version is still warm, answers /ready as
that very version and bundle, and no promotion holds the lock, it moves all traffic there under the promotion
lock, then hands over to the full ``mlrelease rollback``, which finds the traffic moved and does the rest
(slots, aliases, audit, verification). Otherwise it changes nothing and hands over at once, so the full
command's rules (waiting for the lock, aborting a running canary, crash recovery, a cold ``--to``) apply.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.targets.state import DeployState

PROD = "production"


@dataclass(frozen=True)
class FastSwitch:
    """What the fast path did: traffic moved from ``from_version`` to ``to_version``, and when."""

    from_version: str
    to_version: str
    seconds_since_command: float
    switch_s: float


STARTED_VAR = "MLRELEASE_COMMAND_STARTED"


def process_started() -> float:
    """Wall-clock start of the command: rollback.sh's own clock reading when it set one, else this process's start.

    The kernel gives a process's start relative to boot, and the boot time in whole seconds, so psutil's figure is
    off by up to a second (more as the clock drifts over the machine's uptime): "moved 1.2 s after the command
    started" could mean 0.4 s. A stamp from another command (an exported variable) is ignored.
    """
    import psutil

    kernel = float(psutil.Process().create_time())
    try:
        stamp = float(os.environ.get(STARTED_VAR, "").replace(",", "."))  # bash's EPOCHREALTIME follows the locale
    except ValueError:
        return kernel
    return stamp if abs(stamp - kernel) < 3.0 and stamp <= time.time() else kernel


def fast_goal(state: DeployState, to: str | None) -> tuple[str, str] | str:
    """(serving version, warm previous version) when the fast path applies; otherwise why it does not."""
    if state.operation is not None:
        return f"an interrupted `{state.operation.command}` must be recovered first"
    env = state.environments.get(PROD)
    stable = env.slots.get("stable") if env else None
    previous = env.slots.get("previous") if env else None
    if env is None or stable is None or previous is None:
        return "no warm previous production version"
    mark = state.last_rollback
    if to is None and mark is not None and mark.to_version == stable.version:
        return f"already rolled back from version {mark.from_version} to {mark.to_version}"  # as the full command
    if to is not None and to != previous.version:
        return f"--to {to} is not the warm previous version ({previous.version})"
    if previous.version == stable.version:
        return f"the warm slot serves the current version {stable.version}"
    if previous.expires_at is not None and previous.expires_at < time.time():
        return f"the rollback window of version {previous.version} has expired"
    if env.weight("previous") >= 100:
        return "all traffic is already on the previous version"
    return stable.version, previous.version


def switch(state_dir: Path, to: str | None, by: str, reason: str, started: float) -> FastSwitch | str:
    """Under the promotion lock (never waiting for it), move production to the warm previous version.

    The rollback is journaled before traffic moves: until the full command has finished it, every other command
    refuses to run and a re-run of the rollback finishes it.
    """
    from deploy.targets.base import DeploymentError
    from deploy.targets.local import LocalTarget
    from deploy.targets.state import Operation
    from mlrelease.core.locking import PromotionLocked, promotion_lock

    target = LocalTarget(state_dir)
    try:
        with promotion_lock(state_dir, "rollback (fast switch)", by):
            state = target.store.load()
            goal = fast_goal(state, to)
            if isinstance(goal, str):
                return goal
            t0 = time.monotonic()
            state.operation = Operation(
                command="rollback", version=goal[1], pid=os.getpid(), by=by, from_version=goal[0], reason=reason
            )
            target.store.save(state)
            # checks the slot's identity first; if it fails, the full command finishes the journaled rollback cold
            target.set_weights(PROD, {"previous": 100})
            done = time.monotonic()
            return FastSwitch(goal[0], goal[1], round(time.time() - started, 3), round(done - t0, 4))
    except PromotionLocked:
        return "another promotion holds the lock (the full rollback asks it to stop)"
    except DeploymentError as exc:
        return f"the warm version cannot take traffic: {exc}"


def _args(argv: list[str]) -> argparse.Namespace | None:
    """The options the fast path needs; None when they do not parse (the full command then explains)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for flag in ("--to", "--reason", "--by", "--params"):
        parser.add_argument(flag)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("-h", "--help", action="store_true")
    try:
        args, unknown = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return None
    return None if unknown else args


def main(argv: list[str] | None = None) -> int:
    """Fast switch when it applies, then the full ``mlrelease rollback`` with the same arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    global _switched
    args = _args(argv)
    switched: FastSwitch | None = None
    state_dir: Path | None = None
    if args is not None and not (args.dry_run or args.help):
        try:
            state_dir, switched = _fast(args)
        except Exception as exc:  # a shortcut only: the full command runs next and says what is wrong
            skipped = f"rollback: the fast path was skipped ({type(exc).__name__}); the full command follows"
            print(skipped, file=sys.stderr)
        _switched = switched
    from mlrelease.commands.release import rollback_main as full

    try:
        full(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code and switched is not None and state_dir is not None:
            print(_after_failure(switched, state_dir), file=sys.stderr)
        return code
    return 0


def _fast(args: argparse.Namespace) -> tuple[Path, FastSwitch | None]:
    """The fast switch for these options: the state folder, and the switch when it moved traffic."""
    from mlrelease.core.settings import get_settings
    from registry.audit import resolve_actor

    state_dir = get_settings().state_dir
    result = switch(state_dir, args.to, resolve_actor(args.by), args.reason or "incident rollback", process_started())
    return state_dir, result if isinstance(result, FastSwitch) else None


def _after_failure(switched: FastSwitch, state_dir: Path) -> str:
    """What the on-call reads under the full command's error: traffic did move, and whether a re-run is needed
    (only while the rollback is still journaled; one that finished but failed its check needs investigating)."""
    from deploy.targets.state import StateStore

    moved = (
        f"rollback: production traffic was moved to version {switched.to_version} "
        f"{switched.seconds_since_command:.2f} s after the command started"
    )
    try:
        pending = StateStore(state_dir).load().operation
    except Exception:  # unreadable: say what is sure
        pending = None
    if pending is not None and pending.command == "rollback":
        return (
            f"{moved}; the steps after it failed as shown above. Fix that, then run scripts/rollback.sh again to "
            "finish (other commands wait for it; `mlrelease status` shows where traffic is now)."
        )
    return f"{moved}, and the rollback's steps are done; the error above came after them (`mlrelease status`)."


_switched: FastSwitch | None = None  # set by main() in this process, read by the full command that follows


def switched_to(goal: str) -> FastSwitch | None:
    """This command's fast switch, when it moved traffic to ``goal``."""
    return _switched if _switched is not None and _switched.to_version == goal else None


if __name__ == "__main__":
    # run main() in the importable module, not in __main__: the full command reads _switched from there
    from registry.fast_rollback import main as shared_main

    sys.exit(shared_main())
