"""The event-loop lag monitor: a loop held by a slow callback shows up as a late timer, and stop means stop."""

from __future__ import annotations

import asyncio
import time

import pytest

from deploy.serving.looplag import LoopLagMonitor


def test_a_blocked_loop_is_observed_as_lag_and_stop_ends_the_samples() -> None:
    samples: list[float] = []

    async def scenario() -> int:
        monitor = LoopLagMonitor(samples.append, 0.005)
        monitor.start(asyncio.get_running_loop())
        await asyncio.sleep(0.03)
        time.sleep(0.06)  # hold the loop, as a slow callback would
        await asyncio.sleep(0.03)
        monitor.stop()
        count = len(samples)
        await asyncio.sleep(0.03)
        return count

    count = asyncio.run(scenario())
    assert count >= 3 and len(samples) == count
    assert max(samples) >= 0.04, samples
    assert sorted(samples)[len(samples) // 2] < 0.04  # an idle loop runs its timers about on time


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        LoopLagMonitor(lambda _: None, 0)
