"""Batched, the fast path's pending prediction: when its callback runs, what finish() answers, and that the
request always leaves its model (a hot swap waits for that count to drop)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from deploy.serving.app import Api, Batched
from deploy.serving.fastpath import INTERNAL_ERROR


class Serving:
    """What Batched reads from app.Serving: the model it answers with, and leave()."""

    def __init__(self) -> None:
        self.model = "model-v3"
        self.left = 0

    def leave(self) -> None:
        self.left += 1


API = Api(
    "/v1/models/{name}:predict", lambda *_: (np.zeros((1, 2)), None), lambda m, p, r: f"{m}:{p.tolist()}:{r}".encode()
)


def batched() -> tuple[Batched, Serving]:
    serving = Serving()
    return Batched(API, serving, "req-1"), serving  # type: ignore[arg-type]  # the stand-in has what is read


def test_an_attached_callback_runs_when_the_batch_delivers_and_finish_answers_with_the_model() -> None:
    pending, serving = batched()
    calls: list[str] = []
    pending.attach(lambda: calls.append("ready"))
    assert calls == []
    pending.deliver(np.array([[0.25, 0.75]]))
    assert calls == ["ready"]
    status, body, headers = pending.finish()
    assert (status, body) == (200, b"model-v3:[[0.25, 0.75]]:req-1") and (
        b"content-type",
        b"application/json",
    ) in headers
    assert serving.left == 1


def test_an_outcome_already_in_runs_the_callback_on_the_next_loop_step_not_inside_attach() -> None:
    pending, _ = batched()
    calls: list[str] = []

    async def scenario() -> list[str]:
        pending.deliver(np.array([[1.0, 0.0]]))
        pending.attach(lambda: calls.append("ready"))
        seen = list(calls)  # attach runs inside the HTTP parser: the callback must not
        await asyncio.sleep(0)
        return seen

    assert asyncio.run(scenario()) == [] and calls == ["ready"]


def test_a_failed_batch_or_an_early_finish_is_a_500_and_the_request_still_leaves_its_model() -> None:
    failed, serving = batched()
    failed.deliver(RuntimeError("model crashed"))
    assert failed.finish() == INTERNAL_ERROR and serving.left == 1
    early, serving = batched()
    assert early.finish() == INTERNAL_ERROR and serving.left == 1


def test_an_answer_builder_that_fails_is_a_500() -> None:
    def broken(model: Any, probs: Any, request_id: Any) -> bytes:
        raise ValueError("cannot build")

    serving = Serving()
    pending = Batched(Api("/v1", API.parse, broken), serving, None)  # type: ignore[arg-type]
    pending.deliver(np.array([[0.5, 0.5]]))
    assert pending.finish() == INTERNAL_ERROR and serving.left == 1


def test_a_delivered_prediction_keeps_no_callback_so_closing_over_it_makes_no_reference_cycle() -> None:
    """With the collector off, the callback must die with its last reference, and no Batched may be left for the
    collector. (Counting ``gc.collect()`` is flaky: asyncio.run and other tests leave their own cyclic garbage.)"""
    import gc
    import weakref

    gc.collect()  # garbage from before this test is not its business
    gc.disable()
    try:
        for early in (False, True):
            pending, _ = batched()

            def done(pending: Batched = pending) -> None:  # closes over the pending answer, as fastpath's does
                pending.finish()

            if early:
                asyncio.run(_attach_after_delivery(pending, done))
            else:
                pending.attach(done)
                pending.deliver(np.array([[0.5, 0.5]]))
            alive = weakref.ref(done)
            del pending, done
            assert alive() is None, f"early={early}: the callback outlived its last reference (a reference cycle)"
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if isinstance(o, Batched)]
        assert left == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def _attach_after_delivery(pending: Batched, done: Any) -> None:
    pending.deliver(np.array([[0.5, 0.5]]))
    pending.attach(done)
    await asyncio.sleep(0)


def test_prediction_routes_are_remembered_by_path_within_bounds() -> None:
    """ModelServer.fast_route: the same answer as the parse, kept for short paths, the memory never over 256."""
    from types import SimpleNamespace

    from deploy.serving.app import V1, V2, ModelServer

    server = SimpleNamespace(_routes={}, _fast_route=ModelServer._fast_route)
    route = ModelServer.fast_route
    assert route(server, b"/v1/models/m:predict") == (V1, "m")  # type: ignore[arg-type]
    assert route(server, b"/v2/models/m/infer") == (V2, "m")  # type: ignore[arg-type]
    assert route(server, b"/v2/models/m/versions/1/infer") is None  # type: ignore[arg-type]
    assert route(server, b"/v1/models/m:predict") == (V1, "m")  # type: ignore[arg-type]  # from memory now
    assert set(server._routes) == {b"/v1/models/m:predict", b"/v2/models/m/infer", b"/v2/models/m/versions/1/infer"}
    for i in range(1000):
        assert route(server, b"/v1/models/m%d:predict" % i) == (V1, f"m{i}")  # type: ignore[arg-type]
        assert len(server._routes) <= 256
    long = b"/v1/models/" + b"x" * 300 + b":predict"
    assert route(server, long) == (V1, "x" * 300) and long not in server._routes  # type: ignore[arg-type]
