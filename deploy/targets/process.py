"""Detached child processes of the local target (servers, expiry watchers), started the same way."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# A GitHub Actions runner kills, when a job ends, every process whose environment carries its RUNNER_TRACKING_ID:
# deployments a promote or rollback job starts on a self-hosted runner must outlive that job.
JOB_TRACKING_VARS = ("RUNNER_TRACKING_ID",)
OUTER_ENV_VAR = "MLRELEASE_OUTER_MLFLOW_HTTP"  # set by registry.client.brief_requests (deploy must not import it)


def detached_env(extra_env: dict[str, str] | None = None, dropped: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment for a long-lived child, without a CI job's process-tracking marker (nor the
    variables named in ``dropped``)."""
    env = {**os.environ, **(extra_env or {})}
    for name in (*JOB_TRACKING_VARS, *dropped):
        env.pop(name, None)
    return without_brief_requests(env)


def without_brief_requests(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the MLflow request settings from before registry.client.brief_requests (a rollback's short
    registry timeouts are for the rollback, not for the servers it starts, which outlive it)."""
    outer = env.pop(OUTER_ENV_VAR, None)
    if outer is None:
        return env
    for key, value in json.loads(outer).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def spawn_detached(
    cmd: list[str], log_path: Path, extra_env: dict[str, str] | None = None, dropped: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` from the repository in a session of its own (a Ctrl-C of the caller does not reach it), with
    the repository importable and stdout and stderr appended to ``log_path``."""
    env = detached_env(extra_env, dropped)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    with log_path.open("ab") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            env=env,
            start_new_session=True,
        )
