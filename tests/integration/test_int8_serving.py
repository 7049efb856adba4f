"""MLRELEASE_MODEL_VARIANT=int8: the server answers with the registered INT8 artifact, and refuses a tampered one."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serving_helpers import ADMIN_TOKEN, MODEL_NAME, breast_cancer, run_server
from tests.workspace import Workspace

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("pipeline")]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_the_registered_int8_artifact_answers_and_tampered_ones_are_refused(
    registry_workspace: Workspace, tmp_path: Path
) -> None:
    """One server: INT8 from the registry answers; a reload whose INT8 bytes differ from the registry tag, or
    from the card of a folder, is refused and INT8 keeps answering (a refused start is the same check)."""
    import torch

    from registry.client import get_client

    ws = registry_workspace
    tampered = tmp_path / "tampered"
    shutil.copytree(ws.root / "models", tampered)
    artifact = tampered / "variants" / "model_int8.pt"
    data = bytearray(artifact.read_bytes())
    data[-30] ^= 0xFF
    artifact.write_bytes(bytes(data))
    args = ("--model-uri", f"models:/{MODEL_NAME}@candidate")
    x, _, _ = breast_cancer()
    client = get_client(ws.settings())
    version = client.get_model_version_by_alias(MODEL_NAME, "candidate")
    with run_server(
        None, tmp_path, args=args, home=str(ws.root), model_variant="int8", enable_admin="true", admin_token=ADMIN_TOKEN
    ) as srv:
        meta = httpx.get(f"{srv.url}/v1/models/{MODEL_NAME}", timeout=10).json()
        body = httpx.post(f"{srv.url}/v1/models/{MODEL_NAME}:predict", json={"instances": x[:8].tolist()}).json()
        client.set_model_version_tag(MODEL_NAME, version.version, "artifact_sha256_int8", "f" * 64)
        by_tag = httpx.post(f"{srv.url}/admin/reload", json={}, headers=ADMIN, timeout=60)
        by_card = httpx.post(f"{srv.url}/admin/reload", json={"model_dir": str(tampered)}, headers=ADMIN, timeout=60)
        after = httpx.get(f"{srv.url}/v1/models/{MODEL_NAME}", timeout=10).json()
    assert (meta["variant"], meta["runtime"]) == ("int8", "torchscript")
    assert meta["artifact_sha256"] == version.tags["artifact_sha256_int8"] != meta["sha256"]
    int8 = torch.jit.load(str(ws.root / "models" / "variants" / "model_int8.pt"))
    fp32 = torch.jit.load(str(ws.root / "models" / "model.pt"))
    got = np.array([p["probabilities"] for p in body["predictions"]])
    np.testing.assert_allclose(got, int8(torch.from_numpy(x[:8])).numpy(), atol=1e-6)
    assert not np.allclose(got, fp32(torch.from_numpy(x[:8])).numpy(), atol=1e-6)  # INT8 answered, not FP32
    assert by_tag.status_code == 422 and "model_int8.pt" in by_tag.text and "the registry tag" in by_tag.text
    assert by_card.status_code == 422 and "model_int8.pt" in by_card.text and "model card" in by_card.text
    assert after["artifact_sha256"] == meta["artifact_sha256"]
