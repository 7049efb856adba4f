"""The load-test runner's wait for /ready fails fast and says why (its process handling, with real children, is
in tests/integration/test_process_control.py)."""

from __future__ import annotations

import pytest

from deploy.loadtest.runner import LoadtestError, wait_ready
from mlrelease.core.net import free_port


def test_a_server_that_exited_is_not_waited_for() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LoadtestError, match=f"server at {url} exited before it became ready"):
        wait_ready(url, timeout=600, alive=lambda: False)


def test_a_server_that_never_answers_is_reported_after_the_timeout() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LoadtestError, match=r"not ready after 0 s \(no answer\)"):
        wait_ready(url, timeout=0)
