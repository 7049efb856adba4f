"""``scripts/rollback.sh``: the fast switch when it applies, then the full ``mlrelease rollback`` with the same
arguments and the switch's result. Only the fast path's modules are imported before traffic moves."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from release.fast_rollback import FastSwitch, after_failure, process_started, switch


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


def _fast(args: argparse.Namespace) -> tuple[Path, FastSwitch | None]:
    """The fast switch for these options: the state folder, and the switch when it moved traffic."""
    from deploy.targets import make_target
    from mlrelease.core.settings import get_settings
    from release.audit import resolve_actor

    settings = get_settings()
    target = make_target(settings.state_dir, settings.target)
    reason = args.reason or "incident rollback"
    result = switch(settings.state_dir, target, args.to, resolve_actor(args.by), reason, process_started())
    return settings.state_dir, result if isinstance(result, FastSwitch) else None


def _target(argv: list[str]) -> tuple[str, list[str]]:
    """``--target local|kubernetes`` (default local), and the arguments without a ``local`` one (the local
    commands take no --target). Plain list work: the local fast path imports nothing more for it."""
    for i, arg in enumerate(argv):
        if arg == "--target" and i + 1 < len(argv):
            name, rest = argv[i + 1], argv[:i] + argv[i + 2 :]
        elif arg.startswith("--target="):
            name, rest = arg.split("=", 1)[1], argv[:i] + argv[i + 1 :]
        else:
            continue
        return name, (rest if name == "local" else argv)
    return "local", argv


def main(argv: list[str] | None = None) -> int:
    """Fast switch when it applies, then the full rollback command, handed what the switch did."""
    target, argv = _target(list(sys.argv[1:] if argv is None else argv))
    if target == "kubernetes":  # no local traffic to move: render, say the abort command, record (release.k8s)
        from mlrelease.commands.render import rollback_main as kubernetes

        return kubernetes(argv)
    if target != "local":
        print(f"scripts/rollback.sh: --target {target}: one of local, kubernetes", file=sys.stderr)
        return 2
    args = _args(argv)
    switched: FastSwitch | None = None
    state_dir: Path | None = None
    if args is not None and not (args.dry_run or args.help):
        try:
            state_dir, switched = _fast(args)
        except Exception as exc:  # a shortcut only: the full command runs next and says what is wrong
            skipped = f"rollback: the fast path was skipped ({type(exc).__name__}); the full command follows"
            print(skipped, file=sys.stderr)
    from mlrelease.commands.release import rollback_main as full

    try:
        full(argv, switched)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code and switched is not None and state_dir is not None:
            print(after_failure(switched, state_dir), file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
