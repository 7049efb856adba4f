"""The load-test runner's process handling: a time limit, and a stop check while Locust runs."""

from __future__ import annotations


def test_a_stop_check_ends_the_load_test_process_at_once() -> None:
    """`promote staging` held the promotion lock through its whole Locust run, so an incident rollback waiting for
    it gave up: the run now checks for the rollback's abort request and stops Locust when there is one."""
    import subprocess
    import sys
    import time

    import pytest

    from deploy.loadtest.runner import run_stoppable

    started = time.monotonic()

    def stop() -> None:
        if time.monotonic() - started > 0.3:
            raise RuntimeError("aborted: a rollback was requested")

    sleeper = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"]
    with pytest.raises(RuntimeError, match="aborted"):
        run_stoppable(sleeper, {}, 60, stop)
    assert time.monotonic() - started < 5
    done = run_stoppable([sys.executable, "-c", "print('out')"], {}, 60, stop=None)
    assert done.returncode == 0 and done.stdout == "out\n"
    with pytest.raises(subprocess.TimeoutExpired):
        run_stoppable(sleeper, {}, 0.5, stop=None)
