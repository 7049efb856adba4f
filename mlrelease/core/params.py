"""Typed view of params.yaml: every section is a pydantic model that forbids unknown keys, so a typo fails fast."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

_SectionT = TypeVar("_SectionT", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    source: str
    target: str = "target"
    schema_path: str = Field(alias="schema")
    test_size: float = Field(0.2, gt=0, lt=0.5)
    val_size: float = Field(0.2, gt=0, lt=0.5)
    reference_bins: int = Field(10, ge=2, le=100)


class ModelParams(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    kind: Literal["mlp", "logreg"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [64, 32])
    dropout: float = Field(0.1, ge=0, lt=1)


class TrainParams(_Section):
    max_epochs: int = Field(300, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(20, ge=1)


# Gate thresholds carry the direction that loosens them, so `mlrelease compare` names a PR that does (one place:
# the field that defines a threshold says which way is laxer).
LOWER_IS_LAXER: dict[str, Any] = {"loosens": "down"}
HIGHER_IS_LAXER: dict[str, Any] = {"loosens": "up"}
# A gate switch (not a number): its values from the strictest to the laxest, for `mlrelease compare`.
SCAN_SWITCH: dict[str, Any] = {"strictest_first": ["true", "auto", "false"]}


class GateParams(_Section):
    min_accuracy: float = Field(ge=0.8, le=1.0, json_schema_extra=LOWER_IS_LAXER)
    min_roc_auc: float = Field(ge=0.85, le=1.0, json_schema_extra=LOWER_IS_LAXER)
    champion_tolerance: float = Field(0.01, ge=0, le=1, json_schema_extra=HIGHER_IS_LAXER)
    behavioural_batch_sizes: list[int] = Field(default_factory=lambda: [1, 8, 16, 32])


class ExportParams(_Section):
    parity_atol: float = Field(1e-5, gt=0, json_schema_extra=HIGHER_IS_LAXER)
    latency_warmup: int = Field(20, ge=0)
    latency_runs: int = Field(300, ge=10)
    max_mean_ms_batch1: float = Field(100, gt=0, json_schema_extra=HIGHER_IS_LAXER)
    max_p95_ms_batch1: float = Field(150, gt=0, json_schema_extra=HIGHER_IS_LAXER)
    # the INT8 variant (pipelines/quantize.py): dynamic quantization of the linear layers, behind its own gates;
    # a variant that fails them is reported and not registered, and never holds the FP32 release back
    int8: bool = True
    int8_max_accuracy_drop: float = Field(0.02, ge=0, le=1, json_schema_extra=HIGHER_IS_LAXER)
    int8_max_auc_drop: float = Field(0.01, ge=0, le=1, json_schema_extra=HIGHER_IS_LAXER)
    int8_max_prob_diff: float = Field(0.2, ge=0, le=1, json_schema_extra=HIGHER_IS_LAXER)


class Params(_Section):
    seed: int = 42
    data: DataParams
    model: ModelParams
    train: TrainParams
    gates: GateParams
    export: ExportParams
    # Sections owned by later stages (serving, load test, image, promotion) are kept as raw mappings here
    # and parsed by the module that owns them, so that each module keeps its own strict model.
    loadtest: dict[str, object] | None = None
    serving: dict[str, object] | None = None
    build: dict[str, object] | None = None
    scan: dict[str, object] | None = None
    canary: dict[str, object] | None = None
    promotion: dict[str, object] | None = None

    @field_validator("seed")
    @classmethod
    def _seed_positive(cls, value: int) -> int:
        if value < 0:
            raise ValueError("seed must be >= 0")
        return value


class ConfigFileError(ValueError):
    """A configuration file the user edits (params.yaml, a data contract) is missing or malformed."""


class ParamsError(ConfigFileError):
    """params.yaml is missing, not YAML, or does not match the expected shape."""


def run_stage(name: str, main: Callable[[], int], config_exit: int = 1) -> int:
    """A DVC stage's entry point: a mistake in a configuration file ends in one line naming the file and the bad
    keys, not a traceback (the stage writes nothing), and exits ``config_exit`` (a gate keeps 1 for its verdict)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return main()
    except ConfigFileError as exc:
        sys.stderr.write(f"{name}: {exc}\nFix that file, then `dvc repro`.\n")
        return config_exit


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError naming every bad key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found (run from the repository root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ParamsError(f"{path}: {problems}") from exc


def section(params: Params, name: str, model: type[_SectionT]) -> _SectionT:
    """Parse a raw later-stage section (e.g. 'loadtest') with its owner's strict model."""
    raw = getattr(params, name) or {}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{name}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ParamsError(f"params.yaml: {problems}") from exc


# ----- release thresholds: the canary analysis and promotion, read from params.yaml like the stages' ----------
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # a Prometheus label name


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``30s``, ``2m``, ``500ms`` or a bare number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration; use e.g. 30s, 2m, 500ms")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


class CanaryParams(BaseModel):
    """The ``canary:`` section of params.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: list[float] = Field(default_factory=lambda: [5.0, 25.0, 50.0])
    interval: float = 30.0
    failure_limit: int = Field(0, ge=0, json_schema_extra=HIGHER_IS_LAXER)
    inconclusive_limit: int = Field(1, ge=0, json_schema_extra=HIGHER_IS_LAXER)
    min_requests: int = Field(20, ge=1, json_schema_extra=LOWER_IS_LAXER)
    max_error_rate: float = Field(0.01, ge=0, le=1, json_schema_extra=HIGHER_IS_LAXER)
    max_error_rate_increase: float = Field(0.005, ge=0, le=1, json_schema_extra=HIGHER_IS_LAXER)
    max_client_error_rate_increase: float = Field(0.01, ge=0, le=1, json_schema_extra=HIGHER_IS_LAXER)
    client_error_z: float = Field(3.0, gt=0, json_schema_extra=HIGHER_IS_LAXER)
    min_traffic_share: float = Field(0.5, ge=0, le=1, json_schema_extra=LOWER_IS_LAXER)
    traffic_share_z: float = Field(3.0, gt=0, json_schema_extra=HIGHER_IS_LAXER)
    max_p99_latency_ms: float = Field(500.0, gt=0, json_schema_extra=HIGHER_IS_LAXER)
    max_p99_ratio: float = Field(2.0, ge=1, json_schema_extra=HIGHER_IS_LAXER)
    p99_slack_ms: float = Field(25.0, ge=0, json_schema_extra=HIGHER_IS_LAXER)
    max_divergence: float = Field(0.05, ge=0, le=1, json_schema_extra=HIGHER_IS_LAXER)
    divergence_p_value: float = Field(0.001, gt=0, le=1, json_schema_extra=LOWER_IS_LAXER)
    drive_load: bool = True
    load_rps: float = Field(50.0, gt=0, le=2000)
    load_concurrency: int = Field(4, ge=1, le=64)
    # where the slots' counters come from: their own /metrics through the target, or a team's Prometheus (PromQL)
    metrics_provider: Literal["scrape", "prometheus"] = "scrape"
    prometheus_url: str | None = Field(None, pattern=r"^https?://\S+$")
    prometheus_labels: dict[str, str] = Field(default_factory=dict)  # more matchers of the slots' series
    prometheus_timeout: float = 5.0  # per query
    prometheus_scrape_wait: float = 30.0  # a reading waits this long for Prometheus to scrape every replica

    @field_validator("interval", "prometheus_timeout", "prometheus_scrape_wait", mode="before")
    @classmethod
    def _interval(cls, value: str | float, info: ValidationInfo) -> float:
        seconds = parse_duration(value)
        if seconds <= 0:
            raise ValueError(f"{info.field_name} must be positive")
        return seconds

    @field_validator("prometheus_labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not _LABEL_NAME.match(k) or k in ("environment", "slot")]
        if bad:
            raise ValueError(f"prometheus_labels: {bad} are not label names the provider may set")
        return value

    @model_validator(mode="after")
    def _prometheus_needs_url(self) -> CanaryParams:
        if self.metrics_provider == "prometheus" and not self.prometheus_url:
            raise ValueError("metrics_provider prometheus needs prometheus_url (e.g. http://prometheus:9090)")
        return self

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < w <= 50 for w in value) or value != sorted(value):
            raise ValueError("steps must be increasing percentages in (0, 50] (a canary never takes the majority)")
        return value


class PromotionParams(BaseModel):
    """The ``promotion:`` section of params.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rollback_window: float = 1800.0
    ready_timeout: float = 90.0
    drain_timeout: float = 15.0
    rollback_lock_wait: float = 15.0
    smoke_rows: int = Field(8, ge=1, le=256)
    load_gate: bool = True
    load_gate_rows: int = Field(500, ge=1, le=100_000)
    replicas: int = Field(2, ge=1, le=16)  # server processes per production slot (staging runs one)
    # `promote staging` needs the version's image to have passed `mlrelease scan`: auto = when the slots run the
    # image (the process runtime of the local target does not, so auto is off there); YAML true/false work too
    require_scanned_image: Literal["auto", "true", "false"] = Field("auto", json_schema_extra=SCAN_SWITCH)

    @field_validator("rollback_window", "ready_timeout", "drain_timeout", "rollback_lock_wait", mode="before")
    @classmethod
    def _duration(cls, value: str | float) -> float:
        return parse_duration(value)

    @field_validator("require_scanned_image", mode="before")
    @classmethod
    def _switch(cls, value: object) -> object:
        return str(value).lower() if isinstance(value, bool) else value

    def scanned_image_required(self, slots_run_image: bool) -> bool:
        """Whether `promote staging` gates on a passed scan of the version's image (``auto``: when slots run it)."""
        return self.require_scanned_image == "true" or (self.require_scanned_image == "auto" and slots_run_image)
