"""The local target's status rows: every slot and replica with its supervisor state and proven health."""

from __future__ import annotations

import time

from deploy.targets.base import ReplicaStatus, SlotStatus
from deploy.targets.local.processes import replica_problem
from deploy.targets.local.state import DeployState, Replica, Slot
from deploy.targets.local.supervisor import ProcessInfo, Supervisor
from mlrelease.core.proc import pid_alive


def slot_rows(state: DeployState, supervisor: Supervisor) -> list[SlotStatus]:
    """One row per slot of every environment: version, weight, replicas and health (warm slots: until when)."""
    rows: list[SlotStatus] = []
    for env_name, env in sorted(state.environments.items()):
        for slot_name, slot in sorted(env.slots.items()):
            replicas = tuple(replica_status(supervisor, slot, replica) for replica in slot.replicas)
            healthy = all(r.healthy for r in replicas)
            detail = "; ".join(f"{r.url}: {r.detail}" for r in replicas if not r.healthy)
            if slot.expires_at and healthy:
                detail = f"warm until {time.strftime('%H:%M:%S', time.localtime(slot.expires_at))}"
            rows.append(
                SlotStatus(
                    env_name,
                    slot_name,
                    slot.version,
                    slot.url,
                    replicas[0].pid,
                    env.weight(slot_name),
                    healthy,
                    detail,
                    replicas,
                    slot.expires_at,
                )
            )
    return rows


def replica_status(supervisor: Supervisor, slot: Slot, replica: Replica) -> ReplicaStatus:
    """One replica's pid, supervisor state and health (a busy server may be slow to answer: asked twice)."""
    info = supervisor.info(replica.program) if replica.program else None
    if replica.program:
        pid, state = (info.pid, info.state) if info is not None else (0, "UNKNOWN")
    else:
        pid, state = replica.pid, ("RUNNING" if pid_alive(replica.pid) else "EXITED")
    problem = None
    if state in ("STARTING", "RUNNING"):
        problem = replica_problem(slot, replica, timeout=0.5)[1]
        if problem is not None:
            problem = replica_problem(slot, replica, timeout=3.0)[1]
    else:
        problem = describe_down(info, state)
    return ReplicaStatus(replica.port, replica.url, pid or None, state, problem is None, problem or "")


def describe_down(info: ProcessInfo | None, state: str) -> str:
    """Why a replica does not run, in the supervisor's words (FATAL: it gave up restarting)."""
    if state == "FATAL":
        said = (info.spawn_error or info.description) if info is not None else ""
        return f"the supervisor gave up restarting it ({said}); run `mlrelease reconcile`"
    if state == "BACKOFF":
        return "restarting (backoff after a failed start)"
    return f"not running ({state.lower()})"
