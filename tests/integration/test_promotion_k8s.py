"""The Kubernetes manifests for stable + canary validate against the Kubernetes schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


pytestmark = pytest.mark.integration  # starts processes (external tools, git, subprocesses)


def test_manifests_validate_and_keep_canary_at_zero() -> None:
    files = sorted(K8S.glob("*.yaml"))
    assert files and all(f.read_text().startswith("# ") for f in files)
    tool = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(tool), *map(str, files)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text())]
    canary = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "model-canary")
    assert canary["spec"]["replicas"] == 0
    weights = [
        d["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"]
        for d in docs
        if d["kind"] == "Ingress" and d["metadata"].get("annotations")
    ]
    assert weights == ["0"]
    for deployment in (d for d in docs if d["kind"] == "Deployment"):  # both slots take the same optional key
        env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        ref = env["MLRELEASE_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "mlrelease-serving", "key": "api-key", "optional": True}, deployment["metadata"]
