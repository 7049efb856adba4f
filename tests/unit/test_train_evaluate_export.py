"""train, evaluate and export logic on the real default data, with few epochs to stay fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mlrelease.core.params import load_params
from pipelines.common import Split, predict_proba
from pipelines.evaluate import behavioural_gates, champion_gates, classification_metrics, threshold_gates
from pipelines.export import (
    parity_gates,
    parity_inputs,
    relative_source_paths,
    reload_gate,
    save_reproducible,
    to_torchscript,
)
from pipelines.prepare import prepare
from pipelines.schema import load_contract
from pipelines.train import standardization, train_model
from tests.bad_data import good_frame

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")
CONTRACT = load_contract(REPO / "schemas" / "breast_cancer.yaml")


def _split(frame) -> Split:
    return Split(
        frame[CONTRACT.feature_names].to_numpy(np.float32, copy=True), frame["target"].to_numpy(np.int64, copy=True)
    )


@pytest.fixture(scope="module")
def splits() -> dict[str, Split]:
    return {k: _split(v) for k, v in prepare(good_frame(), CONTRACT, PARAMS.data, seed=42).items()}


@pytest.fixture(scope="module")
def trained(splits):
    return train_model(PARAMS, splits["train"], splits["val"], n_classes=2)


def test_training_is_deterministic(splits) -> None:
    params = PARAMS.model_copy(update={"train": PARAMS.train.model_copy(update={"max_epochs": 30})})
    first = train_model(params, splits["train"], splits["val"], n_classes=2)
    again = train_model(params, splits["train"], splits["val"], n_classes=2)
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key


def test_early_stopping_stops_before_max_epochs(splits) -> None:
    params = PARAMS.model_copy(
        update={"train": PARAMS.train.model_copy(update={"max_epochs": 500, "patience": 3, "lr": 0.05})}
    )
    result = train_model(params, splits["train"], splits["val"], n_classes=2)
    assert len(result.history) < 500
    assert len(result.history) - result.best_epoch == 3


def test_standardization_is_baked_in_and_comes_from_train(splits, trained) -> None:
    mean, scale = standardization(splits["train"].x)
    assert torch.allclose(trained.model.mean, mean) and torch.allclose(trained.model.scale, scale)
    const = np.ones((10, 3), dtype=np.float32)
    assert torch.all(standardization(const)[1] == 1.0)


def test_trained_model_passes_default_gates(splits, trained) -> None:
    proba = predict_proba(trained.model, splits["test"].x)
    scores = classification_metrics(splits["test"].y, proba)
    assert all(g.passed for g in threshold_gates(scores, PARAMS.gates)), scores
    assert all(g.passed for g in behavioural_gates(trained.model, splits["test"], PARAMS.gates, seed=0))


def test_auc_uses_probabilities_not_labels() -> None:
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.6, 0.4], [0.9, 0.1], [0.55, 0.45], [0.2, 0.8]])
    scores = classification_metrics(y, proba)
    assert scores["accuracy"] == 0.75
    assert scores["roc_auc"] == 1.0  # the ranking is perfect even though one label is wrong


def test_multiclass_metrics() -> None:
    y = np.array([0, 1, 2, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3]])
    scores = classification_metrics(y, proba)
    assert scores["accuracy"] == 0.75 and 0 < scores["roc_auc"] <= 1


def test_failed_gate_names_value_and_threshold() -> None:
    gates = threshold_gates({"accuracy": 0.81, "roc_auc": 0.99}, PARAMS.gates)
    failed = [g for g in gates if not g.passed]
    assert [g.name for g in failed] == ["min_accuracy"]
    assert "0.81" in failed[0].line() and str(PARAMS.gates.min_accuracy) in failed[0].line()


class _Exploding(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.exp(x[:, :2])
        return z / z.sum(dim=1, keepdim=True)


def test_behavioural_gates_catch_non_finite_outputs(splits) -> None:
    gates = behavioural_gates(_Exploding(), splits["test"], PARAMS.gates, seed=0)
    assert not next(g for g in gates if g.name == "finite_scaled_x1000").passed


def test_champion_challenger() -> None:
    assert champion_gates({"accuracy": 0.9, "roc_auc": 0.9}, None, 0.01, "none")[0].passed
    worse = champion_gates({"accuracy": 0.95, "roc_auc": 0.97}, {"accuracy": 0.97, "roc_auc": 0.975}, 0.01, "")
    assert [g.passed for g in worse] == [False, True]


@pytest.mark.integration  # starts a process
def test_export_parity_and_fresh_process_reload(splits, trained, tmp_path: Path) -> None:
    scripted, method = to_torchscript(trained.model, torch.from_numpy(splits["test"].x[:4]))
    assert method == "script"
    path = tmp_path / "model.pt"
    save_reproducible(scripted, path)
    assert str(REPO).encode() not in _debug_records(path)  # they name pipelines/model.py, not this checkout
    loaded = torch.jit.load(str(path))
    gates = parity_gates(trained.model, loaded, parity_inputs(splits["test"].x, 0), 1e-5)
    assert all(g.passed for g in gates), [g.line() for g in gates]
    expected = predict_proba(trained.model, splits["test"].x)
    assert reload_gate(path, splits["test"].x, expected, 1e-5).passed
    assert not reload_gate(path, splits["test"].x, expected + 0.1, 1e-5).passed


_NET = """
import torch


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.layer(x), dim=1)
"""


_EXPORT = """
import sys
import torch
from pathlib import Path
from pipelines.export import save_reproducible

checkout = Path(sys.argv[1])
sys.path.insert(0, str(checkout))
import net

torch.manual_seed(0)
frozen = torch.jit.freeze(torch.jit.script(net.Net().eval()))
torch.jit.save(frozen, str(checkout / "plain.pt"))
save_reproducible(frozen, checkout / "model.pt", roots=[str(checkout) + "/"])
"""


def _export_from(checkout: Path) -> tuple[bytes, bytes]:
    """Export, in a process of its own as the stage does, a model whose source sits in ``checkout``: torch's
    own save, and the stage's."""
    import subprocess
    import sys

    checkout.mkdir(parents=True)
    (checkout / "net.py").write_text(_NET)
    subprocess.run([sys.executable, "-c", _EXPORT, str(checkout)], cwd=REPO, check=True, timeout=120)
    return (checkout / "plain.pt").read_bytes(), (checkout / "model.pt").read_bytes()


def test_source_paths_become_relative_to_the_deepest_root_whatever_string_opcode_holds_them() -> None:
    import pickle
    import struct

    names = ("/ck/pipelines/model.py", "/ck/.venv/site-packages/torch/nn/linear.py", "/usr/lib/x.py", "    def f():\n")
    short = pickle.dumps(names, protocol=4)  # SHORT_BINUNICODE; torch writes BINUNICODE (protocol 2)
    wide = b"\x80\x04\x8d" + struct.pack("<Q", 18) + b"/ck/pipelines/a.py" + b"."  # BINUNICODE8
    for original in (short, pickle.dumps(names, protocol=2), wide):
        fixed, left = relative_source_paths(original, ["/ck/.venv/site-packages/", "/ck"])
        out = pickle.loads(fixed)
        if original is wide:
            assert out == "pipelines/a.py" and left == []
            continue
        assert out == ("pipelines/model.py", "torch/nn/linear.py", "/usr/lib/x.py", "    def f():\n")
        assert left == ["/usr/lib/x.py"]  # the exporter warns that this one keeps its absolute path


def _debug_records(model: Path) -> bytes:
    import zipfile

    with zipfile.ZipFile(model) as archive:
        return b"".join(archive.read(n) for n in archive.namelist() if n.endswith(".debug_pkl"))


@pytest.mark.integration  # starts a process
def test_the_same_model_exported_from_two_checkouts_has_the_same_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "clone-a", tmp_path / "elsewhere" / "clone-b"
    (plain_a, same), (plain_b, same_b) = _export_from(a), _export_from(b)
    assert plain_a != plain_b  # torch.jit.save names the source files by absolute path
    assert same == same_b
    debug = _debug_records(a / "model.pt")  # torch deflates these records: read them through the archive
    assert b"net.py" in debug and str(tmp_path).encode() not in debug  # kept, with paths relative to the checkout
    assert str(tmp_path).encode() in _debug_records(a / "plain.pt")
    x = torch.randn(4, 3)
    assert torch.equal(torch.jit.load(str(a / "model.pt"))(x), torch.jit.load(str(a / "plain.pt"))(x))


class _Unscriptable(torch.nn.Module):
    def forward(self, x):  # no annotations and a **kwargs call torch.jit.script cannot compile
        return torch.softmax(x[:, :2], **{"dim": 1})


def test_export_falls_back_to_trace_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="falling back to torch.jit.trace"):
        _, method = to_torchscript(_Unscriptable(), torch.ones(2, 4))
    assert method == "trace"
