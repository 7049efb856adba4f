"""``python -m deploy.targets.launch ENV_FILE -- COMMAND…``: become COMMAND in ENV_FILE's environment.

A supervised replica starts through this shim so that it runs in the exact environment of the command that
deployed it (settings, secrets, paths), not in the supervisor's, which was fixed when the supervisor started.
The file is JSON, readable by its owner only; ``exec`` keeps the pid, so the supervisor watches the server itself.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    """Read the environment file and exec the command after ``--`` (exit 2 naming what is wrong otherwise)."""
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m deploy.targets.launch ENV_FILE -- COMMAND...\n")
        return 2
    try:
        with open(argv[0], encoding="utf-8") as handle:
            env = json.load(handle)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"cannot read the environment file {argv[0]}: {exc}\n")
        return 2
    os.execve(argv[2], argv[2:], {str(k): str(v) for k, v in env.items()})  # noqa: S606
    return 0  # not reached: execve replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
