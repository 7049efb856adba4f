"""An opt-in numpy runner for TorchScript graphs that are a plain chain of tabular-MLP ops, used only once checked.

For a model this small, TorchScript's fixed cost per call (its interpreter and ATen's dispatch, once per op) is
most of a micro-batch's time; numpy does the same arithmetic with less of that overhead. With
``MLRELEASE_MODEL_RUNTIME=auto`` the graph of the frozen module that ``torch.jit.load`` returned (nothing else is ever
loaded) is lowered op by op to numpy: a chain where each op takes the previous value and constants
(standardisation, ``linear``, activations, ``softmax``). Any other op or shape of graph keeps TorchScript, and so
does a runner whose outputs differ from TorchScript's on the check inputs (``check_runner``); the server logs and
reports which runtime answers (``runtime`` in the model metadata). The serving benchmark measures it next to the
default TorchScript runtime (README, Measured figures).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

Step = Callable[[np.ndarray], np.ndarray]
Op = tuple[str, tuple[Any, ...]]  # an op kind and its constant operands: what ``build`` turns back into a step
MAX_ABS_DIFF = 1e-5  # probabilities: float32 sums in another order differ by ~1e-7
PROGRAM_FORMAT = 1  # of the saved program (write_program); another format is not read


class Unsupported(ValueError):
    """The graph holds an op or a structure the numpy runner does not cover (TorchScript keeps serving)."""


class NumpyRunner:
    """Runs the lowered steps in order on a float32 [N, F] batch; ``program`` is each op with its constants."""

    def __init__(self, steps: Sequence[Step], ops: Sequence[str], program: Sequence[Op] = ()) -> None:
        self._steps = tuple(steps)
        self.ops = tuple(ops)
        self.program = tuple(program)

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
    program: list[Op] = []
    for node in graph.nodes():
        kind = node.kind()
        if kind == "prim::Constant":
            continue
        if kind not in BUILDERS:
            raise Unsupported(f"op {kind} is not lowered")
        args = list(node.inputs())
        outputs = list(node.outputs())
        if not args or args[0].unique() != current or len(outputs) != 1:
            raise Unsupported(f"{kind} is not part of a single chain from the input")
        program.append((kind, tuple(_constant(arg) for arg in args[1:])))
        current = outputs[0].unique()
    results = list(graph.outputs())
    if len(results) != 1 or results[0].unique() != current or not program:
        raise Unsupported("the graph's output is not the end of the op chain")
    return build(program)


def build(program: Sequence[Op]) -> NumpyRunner:
    """The runner of a lowered program (from ``lower``, or read back by ``read_program``: no torch needed)."""
    steps = []
    for kind, args in program:
        builder = BUILDERS.get(kind)
        if builder is None:
            raise Unsupported(f"op {kind} is not lowered")
        steps.append(builder(*args))
    return NumpyRunner(steps, [kind for kind, _ in program], program)


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


def write_program(runner: NumpyRunner, path: Path, bundle_sha256: str) -> None:
    """Save a checked runner's program for the bundle with ``bundle_sha256``: an ``.npz`` of a JSON header (ops,
    scalar operands) and one array per tensor operand, no pickle; written whole or not at all, owner-only."""
    arrays: dict[str, np.ndarray] = {}
    ops = []
    for kind, args in runner.program:
        spec: list[dict[str, Any]] = []
        for arg in args:
            if isinstance(arg, np.ndarray):
                key = f"a{len(arrays)}"
                arrays[key] = arg
                spec.append({"array": key})
            elif arg is None or isinstance(arg, bool | int | float | str):
                spec.append({"value": arg})
            else:
                raise Unsupported(f"{kind}: operand of type {type(arg).__name__} cannot be saved")
        ops.append({"kind": kind, "args": spec})
    header = {"format": PROGRAM_FORMAT, "bundle_sha256": bundle_sha256, "ops": ops}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")  # 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            savez: Any = np.savez  # its stubs take the array names for its own keyword (allow_pickle)
            savez(handle, header=np.array(json.dumps(header)), **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_program(path: Path, bundle_sha256: str) -> NumpyRunner:
    """The runner saved by ``write_program`` for this bundle (no torch); Unsupported when the file is for another
    bundle or format, or is not such a file."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            header = json.loads(str(saved["header"]))
            if header.get("format") != PROGRAM_FORMAT or header.get("bundle_sha256") != bundle_sha256:
                raise Unsupported(f"{path} holds the program of another bundle or format")
            program = [
                (op["kind"], tuple(saved[a["array"]] if "array" in a else a["value"] for a in op["args"]))
                for op in header["ops"]
            ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Unsupported(f"{path}: not a saved program ({exc})") from exc
    return build(program)
