"""PyTorch models for tabular data, with the training split's standardization baked into the module."""

from __future__ import annotations

import torch
from torch import nn

from mlrelease.core.params import ModelParams


class TabularClassifier(nn.Module):
    """Raw features in, class probabilities out: standardize -> MLP (or linear) -> softmax.

    ``forward`` returns probabilities so the exported TorchScript module is the whole inference path;
    ``logits`` is what training optimizes.
    """

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        hidden: list[int],
        dropout: float,
        mean: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", mean if mean is not None else torch.zeros(n_features))
        self.register_buffer("scale", scale if scale is not None else torch.ones(n_features))
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        # buffers are typed Tensor | Module by nn.Module; class-level annotations would break torch.jit.script
        return self.net((x - self.mean) / self.scale)  # type: ignore[operator]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


def build_model(
    params: ModelParams, n_features: int, n_classes: int, mean: torch.Tensor, scale: torch.Tensor
) -> TabularClassifier:
    """The architecture named in params.yaml (``mlp`` or ``logreg``, a model with no hidden layer)."""
    hidden = list(params.hidden) if params.kind == "mlp" else []
    return TabularClassifier(n_features, n_classes, hidden, params.dropout, mean, scale)
