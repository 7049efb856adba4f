"""The local target's processes: detached start, identity checks and stops of servers and expiry watchers.

Every child starts in a session of its own from the repository (a Ctrl-C of the command that started it does not
reach it, and it outlives that command), without a CI job's process-tracking marker. Process checks go through
psutil (:mod:`mlrelease.core.proc`), HTTP checks through the one loopback probe (:mod:`mlrelease.core.http`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from deploy.targets.launch import MODULE as LAUNCH_MODULE
from deploy.targets.launch import STARTUP_LOCK
from deploy.targets.local.container import (
    CACHE_IN,
    ENV_IN,
    LOCK_IN,
    ImageRun,
    engine_of,
    image_uid,
    inner_env,
    name_prefix,
    owned_by_image,
    replica_argv,
    write_inner_env,
)
from deploy.targets.local.state import Replica, Slot
from deploy.targets.local.supervisor import Program
from mlrelease.core.files import atomic_write
from mlrelease.core.http import probe, wait_until
from mlrelease.core.modelcard import ModelCard
from mlrelease.core.proc import SERVER_MARKER, is_our_server, listeners, pid_alive

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
# A GitHub Actions runner kills, when a job ends, every process whose environment carries its RUNNER_TRACKING_ID:
# deployments a promote or rollback job starts on a self-hosted runner must outlive that job.
JOB_TRACKING_VARS = ("RUNNER_TRACKING_ID",)
OUTER_ENV_VAR = "MLRELEASE_OUTER_MLFLOW_HTTP"  # set by registry.client.brief_requests (deploy must not import it)
# A slot serves the bundle on its command line: a model source in the operator's environment (a documented
# serving setting) would make every slot refuse to start ("set either model_dir or model_uri, not both").
SLOT_DROPPED = ("MLRELEASE_MODEL_URI", "MLRELEASE_MODEL_DIR")
# Staging exists for the release gates, whose load test comes from one client (127.0.0.1): a per-client rate
# limit meant for production would turn the gate's own load into 429s, reported as an error-rate breach.
STAGING_ENV = "staging"
STAGING_OVERRIDES = {"MLRELEASE_RATE_LIMIT_PER_SECOND": "0"}
EXPIRY_MODULE = "deploy.targets.local.expiry"
ROUTER_ADDRESS = "127.0.0.1"  # where the local nginx connects to its replicas from


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


def server_args(version: str, port: int) -> list[str]:
    """The server's arguments after its model: where it listens, which version it says it is."""
    return ["--host", "127.0.0.1", "--port", str(port), "--model-version", str(version)]


def server_command(bundle_dir: Path, version: str, port: int) -> list[str]:
    """``python -m deploy.serving`` for one replica on a loopback port."""
    return [sys.executable, "-m", SERVER_MARKER, "--model-dir", str(bundle_dir), *server_args(version, port)]


def server_env(environment: str, version: str, behind_router: bool) -> dict[str, str]:
    """A replica's environment: this command's, without job markers or a model source, plus the slot's own."""
    # a replica that cannot load its model exits, so the supervisor retries it and gives up visibly
    env = detached_env(
        {"MLRELEASE_MODEL_VERSION": str(version), "MLRELEASE_EXIT_ON_LOAD_FAILURE": "1"}, dropped=SLOT_DROPPED
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if environment == STAGING_ENV:
        env.update(STAGING_OVERRIDES)
    if behind_router:  # its own nginx names the client in X-Forwarded-For; nobody else is trusted to
        env["MLRELEASE_TRUSTED_PROXIES"] = ROUTER_ADDRESS
    return env


def replica_files(state_dir: Path, environment: str, slot: str, version: str, port: int) -> tuple[str, Path, Path]:
    """A replica's program name, the folder of environment files (0700) and its log path; folders made."""
    logs, env_dir = Path(state_dir) / "logs", Path(state_dir) / "supervisor" / "env"
    logs.mkdir(parents=True, exist_ok=True)
    env_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return f"r{port}", env_dir, logs / f"{environment}-{slot}-v{version}-{port}.log"


def replica_program(
    state_dir: Path,
    environment: str,
    slot: str,
    version: str,
    bundle_dir: Path,
    port: int,
    *,
    behind_router: bool,
    drain_timeout_s: float,
    start_retries: int = 3,
) -> Program:
    """The supervisor program of one replica; its environment goes to a file only its owner can read."""
    name, env_dir, log_path = replica_files(state_dir, environment, slot, version, port)
    env_file = env_dir / f"{name}.json"
    env = server_env(environment, version, behind_router)
    env[STARTUP_LOCK] = str(env_dir / f"{environment}-{slot}.start.lock")  # the slot's replicas load in turn
    # the checked numpy lowering answers, and is kept here: a restarted replica is ready without importing torch
    env.setdefault("MLRELEASE_MODEL_RUNTIME", "auto")
    programs = Path(state_dir) / "programs"
    programs.mkdir(mode=0o700, exist_ok=True)
    env["MLRELEASE_PROGRAM_CACHE"] = str(programs)
    atomic_write(env_file, json.dumps(env))  # mkstemp: 0600
    launch = [sys.executable, "-m", LAUNCH_MODULE, str(env_file), "--"]
    log.info("starting %s/%s version %s on port %d (log %s)", environment, slot, version, port, log_path)
    return Program(
        name=name,
        command=launch + server_command(bundle_dir, version, port),
        log_path=log_path,
        directory=REPO_ROOT,
        stopwaitsecs=max(1, round(drain_timeout_s)),
        startretries=start_retries,
    )


def container_program(
    state_dir: Path,
    environment: str,
    slot: str,
    version: str,
    run: ImageRun,
    port: int,
    *,
    behind_router: bool,
    drain_timeout_s: float,
    start_retries: int = 3,
) -> Program:
    """The supervisor program of one replica of the container runtime: the launch shim supervising the engine's
    run of the image; the settings inside go to a file only the image's user can read, mounted read-only."""
    state_dir = Path(state_dir)
    name, env_dir, log_path = replica_files(state_dir, environment, slot, version, port)
    settings = server_env(environment, version, behind_router)
    mounts = {str(owned_by_image(env_dir / f"{environment}-{slot}.start.lock", run)): LOCK_IN}
    cached = image_uid(run) is None or os.geteuid() == 0  # else the server inside could not write the cache
    if cached:  # as for processes: a restarted replica answers through its kept numpy program, without torch
        settings.setdefault("MLRELEASE_MODEL_RUNTIME", "auto")
        mounts[str(owned_by_image(state_dir / "programs-image", run, directory=True))] = CACHE_IN
    inner = write_inner_env(env_dir / f"{name}.inner.json", run, inner_env(run, settings, cached))
    mounts[str(inner)] = f"{ENV_IN}:ro"
    engine = engine_of(run)
    argv = replica_argv(engine, run, mounts, server_args(version, port), port, name_prefix(state_dir) + environment)
    env_file = env_dir / f"{name}.json"
    atomic_write(env_file, json.dumps({**detached_env(), **engine.extra_env}))  # the engine's, on the host
    log.info(
        "starting %s/%s version %s from %s on port %d (log %s)", environment, slot, version, run.image, port, log_path
    )
    return Program(
        name=name,
        command=[sys.executable, "-m", LAUNCH_MODULE, "--supervise", str(env_file), "--", *argv],
        log_path=log_path,
        directory=REPO_ROOT,
        stopwaitsecs=max(1, round(drain_timeout_s)),
        startretries=start_retries,
        stopasgroup=False,  # the shim passes SIGTERM to the server; buildah would kill it at once
    )


def start_watch(state_dir: Path, environment: str, slot: str, uid: str) -> None:
    """Start the detached expiry watcher of a slot that has an expiry (its output goes to the logs folder)."""
    logs = Path(state_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", EXPIRY_MODULE, "--state-dir", str(state_dir), "--environment", environment]
    cmd += ["--slot", slot, "--uid", uid]
    spawn_detached(cmd, logs / "expiry.log")


def replica_problem(slot: Slot, replica: Replica, timeout: float = 1.0) -> tuple[int, str | None]:
    """(HTTP status of /ready, None) when the replica's port is ready and serves the slot's version and bundle;
    otherwise the status and what is wrong. Another process that took the port answers, but not as this slot."""
    status, body = probe(f"{replica.url}/ready", timeout=timeout)
    if status != 200:
        return status, f"{replica.url}/ready answered {status or body}"
    try:
        ready = json.loads(body)
        expected = ModelCard.read(Path(slot.bundle_dir)).sha256
    except (OSError, ValueError) as exc:
        return status, f"cannot check who serves {replica.url}: {exc}"
    if str(ready.get("model_version")) != slot.version or ready.get("sha256") != expected:
        return status, (
            f"{replica.url} is served by version {ready.get('model_version')!r} (sha256 "
            f"{str(ready.get('sha256'))[:12]}), not by version {slot.version} of {slot.bundle_dir}"
        )
    return status, None


def identity_problem(slot: Slot, timeout: float = 1.0) -> tuple[int, str | None]:
    """(200, None) when every replica is ready as the slot; else the first failing replica's status and problem."""
    for replica in slot.replicas:
        status, problem = replica_problem(slot, replica, timeout)
        if problem is not None:
            return status, problem
    return 200, None


def serving_problem(slot: Slot, timeout: float = 1.0) -> str | None:
    """None when at least one replica serves as the slot and none answers as another; else what is wrong."""
    problems = [replica_problem(slot, replica, timeout) for replica in slot.replicas]
    impostor = next((problem for status, problem in problems if status == 200 and problem), None)
    if impostor is not None:
        return impostor
    if any(problem is None for _, problem in problems):
        return None
    return "; ".join(str(problem) for _, problem in problems)


def kill_orphans(replicas: list[Replica], drain_timeout_s: float) -> None:
    """Stop servers a dead supervisor left running on the replicas' ports (a new one restarts them there)."""
    for replica in replicas:
        for pid in listeners(replica.port):
            if is_our_server(pid, replica.port):
                log.warning("stopping pid %d on port %d, left running by a supervisor that died", pid, replica.port)
                stop_unsupervised(replica.model_copy(update={"pid": pid}), drain_timeout_s)


def stop_unsupervised(replica: Replica, drain_timeout_s: float, wait: bool = True) -> None:
    """SIGTERM a server started before supervision (it drains), SIGKILL after the drain timeout; not ours: nothing."""
    if not pid_alive(replica.pid) or not is_our_server(replica.pid, replica.port):
        return
    log.info("stopping the unsupervised server on port %d (pid %d)", replica.port, replica.pid)
    os.kill(replica.pid, signal.SIGTERM)
    if not wait:
        return
    if not wait_until(lambda: gone(replica.pid), drain_timeout_s, interval=0.05):
        with contextlib.suppress(ProcessLookupError):
            os.kill(replica.pid, signal.SIGKILL)
    reap(replica.pid)


def gone(pid: int) -> bool:
    """Reap the pid if it is our exited child, then say whether it is gone."""
    reap(pid)
    return not pid_alive(pid)


def reap(pid: int) -> None:
    """Collect a child's exit status so it does not linger as a zombie (not our child: nothing to do)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
