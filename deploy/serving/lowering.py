"""An opt-in numpy runner for TorchScript graphs that are a plain chain of tabular-MLP ops, used only once checked.

For a model this small, TorchScript's fixed cost per call (its interpreter and ATen's dispatch, once per op) is
most of a micro-batch's time; numpy does the same arithmetic with less of that overhead. With
``MLRELEASE_RUNTIME=auto`` the graph of the frozen module that ``torch.jit.load`` returned (nothing else is ever
loaded) is lowered op by op to numpy: a chain where each op takes the previous value and constants
(standardisation, ``linear``, activations, ``softmax``). Any other op or shape of graph keeps TorchScript, and so
does a runner whose outputs differ from TorchScript's on the check inputs (``check_runner``); the server logs and
reports which runtime answers (``runtime`` in the model metadata). The serving benchmark measures it next to the
default TorchScript runtime (README, Measured figures).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

Step = Callable[[np.ndarray], np.ndarray]
MAX_ABS_DIFF = 1e-5  # probabilities: float32 sums in another order differ by ~1e-7


class Unsupported(ValueError):
    """The graph holds an op or a structure the numpy runner does not cover (TorchScript keeps serving)."""


class NumpyRunner:
    """Runs the lowered steps in order on a float32 [N, F] batch."""

    def __init__(self, steps: Sequence[Step], ops: Sequence[str]) -> None:
        self._steps = tuple(steps)
        self.ops = tuple(ops)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)  # TorchScript's module takes float32: so does its runner
        for step in self._steps:
            batch = step(batch)
        return batch


def _constant(value: Any) -> Any:
    """The Python or numpy value of a graph constant; Unsupported for anything computed."""
    import torch

    node = value.node()
    if node.kind() != "prim::Constant":
        raise Unsupported(f"{node.kind()} feeds a second operand; only constants are lowered")
    constant = value.toIValue()
    if isinstance(constant, torch.Tensor):
        if constant.dtype != torch.float32:
            raise Unsupported(f"constant tensor of {constant.dtype}; only float32 is lowered")
        return constant.detach().numpy().copy()
    return constant


ARITHMETIC = {"sub": np.subtract, "add": np.add, "mul": np.multiply, "div": np.divide}


def _div(other: Any, rounding_mode: Any = None) -> Step:
    if rounding_mode is not None:
        raise Unsupported(f"aten::div with rounding_mode {rounding_mode!r}")
    return _arith("div", other)


def _arith(op: str, other: Any, alpha: Any = 1) -> Step:
    if alpha != 1 or not isinstance(other, np.ndarray | float | int) or isinstance(other, bool):
        raise Unsupported(f"aten::{op} with alpha {alpha!r} or operand {type(other).__name__}")
    if isinstance(other, np.ndarray) and other.ndim > 1:
        raise Unsupported(f"aten::{op} with a {other.ndim}-d constant")
    ufunc = ARITHMETIC[op]
    return lambda x: ufunc(x, other)


def _linear(weight: Any, bias: Any) -> Step:
    if not isinstance(weight, np.ndarray) or weight.ndim != 2:
        raise Unsupported("aten::linear without a constant 2-d weight")
    transposed = np.ascontiguousarray(weight.T)
    if bias is None:
        return lambda x: x @ transposed
    if not isinstance(bias, np.ndarray):
        raise Unsupported("aten::linear with a non-tensor bias")

    def linear(x: np.ndarray) -> np.ndarray:
        out = x @ transposed
        out += bias
        return out

    return linear


def _softmax(dim: Any, dtype: Any = None) -> Step:
    if dim not in (1, -1) or dtype is not None:
        raise Unsupported(f"aten::softmax over dim {dim!r} with dtype {dtype!r}; only the feature dim is lowered")

    def softmax(x: np.ndarray) -> np.ndarray:
        exp = np.exp(x - x.max(axis=1, keepdims=True))
        exp /= exp.sum(axis=1, keepdims=True)
        return exp

    return softmax


def _dropout(p: Any, train: Any) -> Step:
    if train:
        raise Unsupported("aten::dropout in training mode")
    return lambda x: x


BUILDERS: dict[str, Callable[..., Step]] = {
    "aten::sub": partial(_arith, "sub"),
    "aten::add": partial(_arith, "add"),
    "aten::mul": partial(_arith, "mul"),
    "aten::div": _div,
    "aten::linear": _linear,
    "aten::relu": lambda: lambda x: np.maximum(x, np.float32(0)),
    "aten::tanh": lambda: np.tanh,
    "aten::sigmoid": lambda: lambda x: np.float32(0.5) * (np.float32(1) + np.tanh(np.float32(0.5) * x)),
    "aten::softmax": _softmax,
    "aten::dropout": _dropout,
}


def lower(graph: Any) -> NumpyRunner:
    """The numpy runner for ``graph`` (a frozen module's forward graph), or Unsupported naming why not."""
    inputs = list(graph.inputs())
    if len(inputs) != 2:
        raise Unsupported(f"forward takes {len(inputs) - 1} inputs; only one tensor input is lowered")
    current = inputs[1].unique()
    steps: list[Step] = []
    ops: list[str] = []
    for node in graph.nodes():
        kind = node.kind()
        if kind == "prim::Constant":
            continue
        builder = BUILDERS.get(kind)
        if builder is None:
            raise Unsupported(f"op {kind} is not lowered")
        args = list(node.inputs())
        outputs = list(node.outputs())
        if not args or args[0].unique() != current or len(outputs) != 1:
            raise Unsupported(f"{kind} is not part of a single chain from the input")
        steps.append(builder(*(_constant(arg) for arg in args[1:])))
        ops.append(kind)
        current = outputs[0].unique()
    results = list(graph.outputs())
    if len(results) != 1 or results[0].unique() != current or not steps:
        raise Unsupported("the graph's output is not the end of the op chain")
    return NumpyRunner(steps, ops)


def check_runner(runner: NumpyRunner, reference: Callable[[np.ndarray], np.ndarray], batches: list[np.ndarray]) -> None:
    """Raise Unsupported unless the runner gives TorchScript's outputs (within MAX_ABS_DIFF) on every batch."""
    for batch in batches:
        want = reference(batch)  # first: a batch TorchScript itself refuses is the warm-up's error to report
        with np.errstate(all="ignore"):
            got = runner(batch)
        if got.shape != want.shape or got.dtype != want.dtype:
            raise Unsupported(
                f"numpy runner returned {got.dtype} {list(got.shape)}, TorchScript {want.dtype} {list(want.shape)}"
            )
        diff = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
        if not diff <= MAX_ABS_DIFF:
            raise Unsupported(f"numpy runner differs from TorchScript by {diff:.3g} (> {MAX_ABS_DIFF:g})")
