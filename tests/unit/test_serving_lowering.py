"""The numpy runner of a TorchScript graph: what it lowers, what it refuses, and that it answers like TorchScript."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deploy.serving.lowering import MAX_ABS_DIFF, NumpyRunner, Unsupported, check_runner, lower
from pipelines.export import to_torchscript
from pipelines.model import TabularClassifier


def frozen(module: nn.Module, features: int = 6) -> torch.jit.ScriptModule:
    scripted, _ = to_torchscript(module, torch.zeros(2, features))
    return scripted


def torch_predict(module: torch.jit.ScriptModule):
    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(batch)).numpy()

    return predict


def inputs(features: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(3.0, 20.0, size=(rows, features)).astype(np.float32) for rows in (1, 7, 64)]


@pytest.mark.parametrize(("hidden", "classes"), [([16, 8], 3), ([], 2)])
def test_tabular_classifier_lowers_and_matches_torchscript(hidden: list[int], classes: int) -> None:
    torch.manual_seed(0)
    model = TabularClassifier(6, classes, hidden, 0.2, torch.arange(6.0), torch.linspace(0.5, 3.0, 6))
    module = frozen(model)
    runner = lower(module.graph)
    assert runner.ops[:2] == ("aten::sub", "aten::div") and runner.ops[-1] == "aten::softmax"
    check_runner(runner, torch_predict(module), inputs())
    for batch in inputs():
        got = runner(batch)
        assert got.dtype == np.float32 and got.shape == (len(batch), classes)
        np.testing.assert_allclose(got, torch_predict(module)(batch), atol=MAX_ABS_DIFF)


class Activations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5, bias=False)
        self.b = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x * 0.5 + 1.0))
        return torch.sigmoid(self.b(h) - 2.0)


def test_other_chain_ops_lower_and_match() -> None:
    torch.manual_seed(0)
    module = frozen(Activations())
    runner = lower(module.graph)
    assert "aten::tanh" in runner.ops and "aten::sigmoid" in runner.ops
    check_runner(runner, torch_predict(module), inputs())


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.a(x) + x, dim=1)


class Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.norm(x), dim=1)


class SoftmaxOverBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=0)


class FloorDiv(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.div(x, 2.0, rounding_mode="floor")


class SoftmaxInDouble(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=1, dtype=torch.float64)


class DoubleConstant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.ones(6, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.shift


class Squared(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (Residual(), "second operand"),
        (Normed(), "layer_norm is not lowered"),
        (SoftmaxOverBatch(), "dim 0"),
        (FloorDiv(), "rounding_mode 'floor'"),
        (SoftmaxInDouble(), "dtype"),
        (DoubleConstant(), "torch.float64"),
        (Squared(), "second operand"),
    ],
)
def test_graphs_outside_the_chain_keep_torchscript(module: nn.Module, reason: str) -> None:
    with pytest.raises(Unsupported, match=reason):
        lower(frozen(module).graph)


def test_a_runner_that_answers_differently_is_refused() -> None:
    torch.manual_seed(0)
    module = frozen(TabularClassifier(6, 2, [4], 0.0))
    runner = lower(module.graph)
    off = NumpyRunner([runner, lambda p: p + np.float32(1e-3)], ["lowered", "shifted"])
    with pytest.raises(Unsupported, match="differs from TorchScript"):
        check_runner(off, torch_predict(module), inputs())
    with pytest.raises(Unsupported, match=r"returned float32 \[1, 6\], TorchScript float32 \[1, 2\]"):
        check_runner(NumpyRunner([lambda x: x], ["identity"]), torch_predict(module), inputs())
    with pytest.raises(Unsupported, match="returned float64"):
        check_runner(
            NumpyRunner([runner, lambda p: p.astype(np.float64)], ["lowered", "widened"]),
            torch_predict(module),
            inputs(),
        )


def test_the_runner_takes_float32_like_the_module() -> None:
    torch.manual_seed(0)
    module = frozen(TabularClassifier(6, 2, [4], 0.0))
    runner = lower(module.graph)
    rows = np.random.default_rng(2).normal(size=(3, 6))
    assert runner(rows).dtype == np.float32  # float64 rows are computed as the float32 the module would take
    np.testing.assert_allclose(runner(rows), torch_predict(module)(rows.astype(np.float32)), atol=MAX_ABS_DIFF)


def test_load_model_runs_torchscript_unless_told_auto(tmp_path) -> None:
    from deploy.serving.model import check_batches, load_model
    from tests.serving_helpers import make_bundle

    folder = tmp_path / "bundle"
    make_bundle(folder, seed=3, hidden=(8,))
    fast = load_model(folder, version="1", max_batch=16, runtime="auto")
    plain = load_model(folder, version="1", max_batch=16)
    assert (fast.runtime, plain.runtime) == ("numpy", "torchscript")
    assert fast.runner is not None and plain.runner is None
    for batch in check_batches(fast.card, 16):
        np.testing.assert_allclose(fast.predict(batch), plain.predict(batch), atol=MAX_ABS_DIFF)


def test_a_card_that_does_not_fit_the_module_is_still_a_model_load_error_with_the_runner_asked_for(tmp_path) -> None:
    import json

    from deploy.serving.model import ModelLoadError, load_model
    from tests.serving_helpers import make_bundle

    folder = tmp_path / "bundle"
    make_bundle(folder, seed=4, hidden=(8,))
    card_path = folder / "model_card.json"
    card = json.loads(card_path.read_text())
    card["feature_names"] = card["feature_names"][:-1]  # the module still takes one more feature
    for key in ("mean", "scale"):
        card["preprocessing"][key] = card["preprocessing"][key][:-1]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="warm-up"):
        load_model(folder, version="1", max_batch=8, runtime="auto")


def test_a_saved_program_answers_like_the_runner_it_was_saved_from_without_torch(tmp_path) -> None:
    from deploy.serving.lowering import read_program, write_program

    torch.manual_seed(0)
    model = TabularClassifier(6, 3, [16, 8], 0.2, torch.arange(6.0), torch.linspace(0.5, 3.0, 6))
    runner = lower(frozen(model).graph)
    saved = tmp_path / "slot" / "program.npz"
    write_program(runner, saved, "a" * 64)
    assert saved.stat().st_mode & 0o077 == 0  # owner-only, like the bundle's state folder
    again = read_program(saved, "a" * 64)
    assert again.ops == runner.ops
    for batch in inputs():
        np.testing.assert_array_equal(again(batch), runner(batch))
    with pytest.raises(Unsupported, match="another bundle"):
        read_program(saved, "b" * 64)  # a program is only ever used for the bundle it was checked against
    saved.write_bytes(b"not an npz")
    with pytest.raises(Unsupported, match="not a saved program"):
        read_program(saved, "a" * 64)


def test_an_auto_load_keeps_its_checked_program_and_the_next_load_of_that_artifact_needs_no_module(tmp_path) -> None:
    from deploy.serving.model import check_batches, load_model
    from tests.serving_helpers import make_bundle

    folder, cache = tmp_path / "bundle", tmp_path / "programs"
    make_bundle(folder, seed=5, hidden=(8,))
    first = load_model(folder, version="1", max_batch=16, runtime="auto", program_cache=cache)
    assert first.module is not None and first.runtime == "numpy"
    assert [p.name for p in cache.iterdir()] == [f"{first.sha256}.npz"]
    again = load_model(folder, version="1", max_batch=16, runtime="auto", program_cache=cache)
    assert again.module is None and again.runtime == "numpy"  # no torch.jit.load: the saved program answers
    for batch in check_batches(first.card, 16):
        np.testing.assert_array_equal(again.predict(batch), first.predict(batch))
    assert load_model(folder, version="1", max_batch=16, program_cache=cache).runtime == "torchscript"

    other = tmp_path / "other"
    make_bundle(other, seed=6, hidden=(8,))
    (cache / f"{first.sha256}.npz").rename(cache / f"{load_model(other, version='2', max_batch=4).sha256}.npz")
    moved = load_model(other, version="2", max_batch=16, runtime="auto", program_cache=cache)
    assert moved.module is not None  # a program saved for another artifact is never used for this one
