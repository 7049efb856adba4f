"""The micro-batcher: concurrent requests share one model call; results go back to the right caller."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from deploy.serving.batcher import MicroBatcher, run_batch


def test_concurrent_requests_are_coalesced_and_answered_in_order() -> None:
    calls: list[int] = []
    release = threading.Event()

    def predict(batch: np.ndarray) -> np.ndarray:
        if not calls:
            release.wait(5)  # hold the first batch so the others queue up behind it
        calls.append(len(batch))
        return batch * 2

    async def scenario() -> list[np.ndarray]:
        batcher = MicroBatcher(predict, max_rows=64)
        first = asyncio.ensure_future(batcher.predict(np.full((1, 2), 0, np.float32)))
        await asyncio.sleep(0)
        rest = [asyncio.ensure_future(batcher.predict(np.full((1, 2), i, np.float32))) for i in range(1, 6)]
        await asyncio.sleep(0)
        release.set()
        out = await asyncio.gather(first, *rest)
        await batcher.close()
        return out

    results = asyncio.run(scenario())
    assert calls == [1, 5]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, np.full((1, 2), 2 * i, np.float32))


def test_an_idle_batcher_runs_a_lone_request_at_once() -> None:
    async def scenario() -> np.ndarray:
        batcher = MicroBatcher(lambda b: b + 1, max_rows=8)
        out = await batcher.predict(np.zeros((3, 2), np.float32))
        await batcher.close()
        return out

    np.testing.assert_array_equal(asyncio.run(scenario()), np.ones((3, 2), np.float32))


def test_batches_respect_the_row_limit() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def predict(batch: np.ndarray) -> np.ndarray:
        gate.wait(5)
        sizes.append(len(batch))
        return batch

    async def scenario() -> None:
        batcher = MicroBatcher(predict, max_rows=4)
        tasks = [asyncio.ensure_future(batcher.predict(np.zeros((2, 1), np.float32))) for _ in range(5)]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)
        await batcher.close()

    asyncio.run(scenario())
    assert sum(sizes) == 10 and max(sizes) <= 4


def test_a_failing_part_does_not_fail_the_others() -> None:
    def predict(batch: np.ndarray) -> np.ndarray:
        if (batch < 0).any():
            raise ValueError("negative")
        return batch

    outcomes = run_batch(predict, [np.ones((1, 1)), -np.ones((1, 1)), np.ones((2, 1))])
    assert isinstance(outcomes[1], ValueError)
    np.testing.assert_array_equal(outcomes[2], np.ones((2, 1)))
    with pytest.raises(ValueError):
        run_batch(predict, [-np.ones((1, 1))])
