"""Starting and stopping real child processes: detached children of the local target, SIGTERM then SIGKILL,
process groups, zombies, and the load test's stoppable run."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.targets.local.processes import REPO_ROOT, spawn_detached
from mlrelease.core.http import wait_until
from mlrelease.core.net import stop_process
from mlrelease.core.proc import children, pid_alive

pytestmark = pytest.mark.integration

IGNORES_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
)


def test_a_detached_child_does_not_carry_the_runner_tracking_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_TRACKING_ID", "github_0123")
    monkeypatch.setenv("MLRELEASE_KEPT", "yes")
    log = tmp_path / "child.log"
    code = "import os; print(os.environ.get('RUNNER_TRACKING_ID'), os.environ['MLRELEASE_KEPT'], os.environ['EXTRA'])"
    child = spawn_detached([sys.executable, "-c", code], log, {"EXTRA": "given"})
    assert child.wait(timeout=30) == 0
    assert log.read_text().split() == ["None", "yes", "given"]


def test_a_detached_child_can_import_the_repository(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    code = "import deploy.targets.local.processes as p; print(p.__file__)"
    child = spawn_detached([sys.executable, "-c", code], log)
    assert child.wait(timeout=30) == 0
    assert log.read_text().strip().startswith(str(REPO_ROOT))


def test_a_zombie_is_not_alive_and_a_child_is_listed() -> None:
    import os

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert proc.pid in children(os.getpid())  # listed until reaped, zombie or not
        # exited but not reaped: a zombie, which pid_alive does not count
        assert wait_until(lambda: not pid_alive(proc.pid), timeout=30, interval=0.02)
        assert Path(f"/proc/{proc.pid}").exists(), "still a zombie: not reaped yet"
    finally:
        proc.wait()


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    proc = subprocess.Popen([sys.executable, "-c", IGNORES_TERM], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"  # the handler is installed
    assert stop_process(proc, timeout=0.5) == -signal.SIGKILL


def test_group_stop_reaches_the_children() -> None:
    shell = "sleep 60 & echo $!; wait"
    proc = subprocess.Popen(["bash", "-c", shell], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    assert stop_process(proc, timeout=5, group=True) is not None
    # the orphaned child is reaped by init shortly after it dies
    assert wait_until(lambda: not pid_alive(child), timeout=10, interval=0.05), "the child is gone too"


def test_a_stop_check_ends_the_load_test_process_at_once(tmp_path: Path) -> None:
    """`promote staging` held the promotion lock through its whole Locust run, so an incident rollback waiting for
    it gave up: the run now checks for the rollback's abort request and stops Locust when there is one."""
    from deploy.loadtest.runner import run_stoppable

    pid_file = tmp_path / "pid"

    def stop() -> None:
        if pid_file.exists():  # the child runs: the rollback asks now
            raise RuntimeError("aborted: a rollback was requested")

    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    sleeper = [sys.executable, "-c", code]
    with pytest.raises(RuntimeError, match="aborted"):
        run_stoppable(sleeper, {}, 600, stop)
    assert not pid_alive(int(pid_file.read_text())), "the child was killed and reaped"
    done = run_stoppable([sys.executable, "-c", "print('out')"], {}, 60, stop=None)
    assert done.returncode == 0 and done.stdout == "out\n"
    talker = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"]
    with pytest.raises(subprocess.TimeoutExpired) as timed_out:
        run_stoppable(talker, {}, 0.5, stop=None)
    assert timed_out.value.output in ("", "up\n")  # what it wrote before the limit
