"""The committed gRPC code is what grpc_tools.protoc makes of the vendored proto today (regenerated in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = "deploy/serving/grpc/v2/grpc_predict_v2.proto"
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")


def test_the_committed_generated_files_are_current(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from grpc_tools import protoc

    monkeypatch.chdir(ROOT)  # -I . : the generated imports name the package, deploy.serving.grpc.v2
    outputs = [f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}"]
    assert protoc.main(["protoc", "-I.", *outputs, PROTO]) == 0
    stale = [
        name
        for name in GENERATED
        if (tmp_path / PROTO).with_name(name).read_bytes() != (ROOT / PROTO).with_name(name).read_bytes()
    ]
    assert stale == [], f"regenerate {stale}: see deploy/serving/grpc/v2/README.md"


def test_the_service_has_the_protocol_calls() -> None:
    """The vendored proto is the Open Inference Protocol's: package inference, the calls clients make."""
    from deploy.serving.grpc.v2 import grpc_predict_v2_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert pb.DESCRIPTOR.package == "inference"
    assert {"ServerLive", "ServerReady", "ModelReady", "ModelMetadata", "ModelInfer"} <= set(service.methods_by_name)
