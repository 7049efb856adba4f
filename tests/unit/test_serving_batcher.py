"""The micro-batcher: concurrent requests share one model call; results go back to the right caller."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from deploy.serving.batcher import MicroBatcher, RowErrors, run_batch


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


def test_rows_without_an_answer_fail_only_their_parts_and_nothing_runs_twice() -> None:
    calls: list[int] = []
    counted: list[list[bool]] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        bad = (batch < 0).any(axis=1)
        if bad.any():
            raise RowErrors(batch, bad, lambda rows: ValueError(f"rows {rows.tolist()}"), counted_rows)
        return batch

    def counted_rows(answered: np.ndarray) -> None:
        counted.append(answered.tolist())

    parts = [np.ones((1, 1)), np.array([[2.0], [-1.0], [3.0], [-4.0]]), np.full((2, 1), 5.0)]
    outcomes = run_batch(predict, parts)
    assert calls == [7]  # the batch ran once: its good parts are answered from that call
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "rows [1, 3]"  # numbered within the part
    np.testing.assert_array_equal(outcomes[0], parts[0])
    np.testing.assert_array_equal(outcomes[2], parts[2])
    assert counted == [[True, False, False, False, False, True, True]]  # the failed request's good rows are not
    alone = run_batch(predict, [parts[1]])
    assert len(alone) == 1 and isinstance(alone[0], ValueError) and str(alone[0]) == "rows [1, 3]"
    assert len(counted) == 1  # nothing answered, nothing counted

    def flaky(batch: np.ndarray) -> np.ndarray:  # the whole batch fails: each part runs alone, rows still named
        if len(batch) > 4:
            raise RuntimeError("batch failed")
        return predict(batch)

    again = run_batch(flaky, parts)
    assert isinstance(again[1], ValueError) and str(again[1]) == "rows [1, 3]"
    np.testing.assert_array_equal(again[2], parts[2])


class RecordingSink:
    """A batcher Sink that notes what it got and in which loop step."""

    def __init__(self, log: list[tuple[str, object]], name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail

    def deliver(self, outcome: object) -> None:
        self.log.append((self.name, outcome))
        if self.fail:
            raise RuntimeError("sink broke")


@pytest.mark.parametrize("inline", [True, False])
def test_sinks_get_outcomes_straight_from_the_batch_and_a_broken_one_harms_no_other(inline: bool) -> None:
    got: list[tuple[str, object]] = []

    async def scenario() -> None:
        batcher = MicroBatcher(lambda b: b * 3, max_rows=8, inline=inline)
        batcher.enqueue(np.ones((1, 2), np.float32), RecordingSink(got, "a", fail=True))
        batcher.enqueue(np.full((2, 2), 2, np.float32), RecordingSink(got, "b"))
        future = batcher.submit(np.zeros((1, 2), np.float32))
        if inline:  # the batch was scheduled first; sinks delivered through another loop step would come after this
            asyncio.get_running_loop().call_soon(got.append, ("marker", None))
        await future  # the future resolves in the same completion as the sinks, after them
        assert [name for name, _ in got][:2] == ["a", "b"]
        await batcher.close()

    asyncio.run(asyncio.wait_for(scenario(), 5))
    np.testing.assert_array_equal(got[0][1], np.full((1, 2), 3, np.float32))
    np.testing.assert_array_equal(got[1][1], np.full((2, 2), 6, np.float32))


def test_a_sink_that_queues_more_work_gets_one_batch_not_two() -> None:
    sizes: list[int] = []
    batches: list[tuple[int, int]] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return batch

    async def scenario() -> None:
        batcher = MicroBatcher(predict, max_rows=8, on_batch=lambda *counts: batches.append(counts), inline=True)
        later: list[tuple[str, object]] = []

        class Chain:
            def deliver(self, outcome: object) -> None:
                batcher.enqueue(np.zeros((1, 2), np.float32), RecordingSink(later, "next"))

        batcher.enqueue(np.zeros((1, 2), np.float32), Chain())
        batcher.enqueue(np.zeros((1, 2), np.float32), RecordingSink(later, "same"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert [name for name, _ in later] == ["same", "next"]
        await batcher.close()

    asyncio.run(scenario())
    assert sizes == [2, 1] and batches == [(2, 2), (1, 1)]  # no empty batch dispatched twice
