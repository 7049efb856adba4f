"""Serving settings: the shared runtime Settings plus where the model comes from.

``model_dir``, ``model_uri``, ``model_version`` and ``graceful_timeout_s`` are read as MLRELEASE_* variables
like
every other setting; command-line flags of ``python -m deploy.serving`` override them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mlrelease.core.settings import Settings


class ServingSettings(Settings):
    """Settings of one server process."""

    model_dir: Path | None = None
    model_uri: str | None = Field(default=None, pattern=r"^models:/[^/@]+(@[\w.-]+|/\d+)$")
    model_version: str | None = Field(default=None, pattern=r"^[\w.-]{1,64}$")
    graceful_timeout_s: float = Field(10.0, gt=0, le=300)
    model_variant: Literal["fp32", "int8"] = Field(
        "fp32",
        description="which artifact of the version answers: fp32 (model.pt) or int8 (the dynamically quantized "
        "variants/model_int8.pt, checked against its own sha256 in the card and registry tag); a version without "
        "that artifact is refused, and the server stays not ready",
    )
    inline_max_batch_ms: float = Field(
        0.5, ge=0, description="run batches on the event loop when the largest one warms up faster; 0 = never"
    )
    model_runtime: Literal["torchscript", "auto"] = Field(
        "torchscript",
        description="torchscript: run the loaded module; auto: answer through the numpy lowering of its graph when "
        "that covers the graph and matches TorchScript's outputs (deploy/serving/lowering.py)",
    )
    program_cache: Path | None = Field(
        None,
        description="with runtime auto: a folder where each checked numpy program is kept by its artifact's sha256; "
        "a later start with the same verified artifact answers through it without importing torch (the local "
        "target sets it to its state folder, so a restarted replica is ready sooner)",
    )
    loop_lag_interval_ms: float = Field(
        20.0, ge=0, le=60_000, description="how often the event-loop lag histogram samples the loop; 0 = off"
    )
    keep_alive_s: float = Field(
        5.0,
        ge=2,
        le=3600,
        description="close a keep-alive connection idle this long (uvicorn's timeout_keep_alive); at least 2 s, so "
        "the loopback nginx, which drops idle upstream connections after 1 s, never sends a request down one the "
        "server is closing",
    )
    exit_on_load_failure: bool = Field(
        False,
        description="exit when the model cannot be loaded at start instead of staying up not ready, so that a "
        "supervisor restarts it with backoff and gives up visibly (the local target and Kubernetes want this)",
    )
    startup_lock_fd: int | None = Field(
        None,
        ge=3,
        description="an inherited descriptor holding the slot's start-up lock (deploy/targets/launch.py), closed once "
        "the first load ends: a slot's replicas load one after another, so the first is ready sooner",
    )
    fast_path: bool = Field(
        True, description="answer plain prediction requests in the HTTP protocol, without an ASGI task (fastpath.py)"
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="close a connection whose request headers are not complete this long after the connection "
        "opened (first request) or the request's first byte (later ones); 408 once part of them arrived",
    )
    max_half_open_per_client: int = Field(
        32,
        ge=0,
        description="connections one client address may hold with request headers incomplete; more are closed at "
        "once (0 = no cap; trusted proxies are exempt)",
    )
    max_queue_ms: float = Field(
        500.0,
        ge=0,
        le=600_000,
        description="refuse a prediction with 503 'overloaded' when it would wait longer than this for the model; "
        "0 = never",
    )
    breaker_failures: int = Field(
        5, ge=0, description="consecutive failed model calls that open the circuit breaker; 0 = no breaker"
    )
    breaker_reset_s: float = Field(
        5.0, gt=0, le=3600, description="how long an open breaker refuses predictions before one probe goes through"
    )
    grpc_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="also serve the Open Inference Protocol over gRPC on this port (same host, model and limits; "
        "deploy/serving/grpc); unset = off",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ServingSettings:
        if self.model_dir is not None and self.model_uri is not None:
            raise ValueError("set either model_dir or model_uri, not both")
        if self.grpc_port is not None and self.grpc_port == self.port:
            raise ValueError(f"grpc_port {self.grpc_port} is the HTTP port too; give gRPC a port of its own")
        return self

    def source(self) -> ModelSource:
        """The model this server loads at start and on SIGHUP."""
        if self.model_dir is None and self.model_uri is None:
            raise ValueError(
                "no model: pass --model-dir DIR or --model-uri models:/NAME@ALIAS "
                "(or set MLRELEASE_MODEL_DIR / MLRELEASE_MODEL_URI)"
            )
        return ModelSource(model_dir=self.model_dir, model_uri=self.model_uri, version=self.model_version)


@dataclass(frozen=True)
class ModelSource:
    """A bundle folder (or model.pt in one) or a registry URI, with an optional version label override."""

    model_dir: Path | None = None
    model_uri: str | None = None
    version: str | None = None

    def describe(self) -> str:
        return str(self.model_dir) if self.model_dir is not None else str(self.model_uri)


def available_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def check_cpu_budget(settings: Settings) -> None:
    """One process per server (micro-batching needs it); workers x torch threads within the CPUs."""
    if settings.workers != 1:
        raise ValueError(
            f"MLRELEASE_WORKERS={settings.workers}: this server runs one process (the micro-batcher "
            "and hot swap live in it); scale out with replicas instead"
        )
    cpus = available_cpus()
    if settings.workers * settings.torch_threads > cpus:
        raise ValueError(
            f"workers x torch_threads = {settings.workers * settings.torch_threads} exceeds the "
            f"{cpus} CPUs available; lower MLRELEASE_TORCH_THREADS"
        )
