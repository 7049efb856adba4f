"""Size of our serving image against the one ``mlflow models generate-dockerfile`` makes for the same model,
built the same way here (buildah, a Debian bookworm base from mmdebstrap, the same torch CPU wheel).

MLflow's Dockerfile starts from python:3.11.x-slim and apt-installs nginx; where no registry is reachable the
comparison base is bootstrapped with Python, pip and nginx instead, and the apt steps become no-ops.
Run: ``python -m benchmarks.bench_image_size --model-uri models:/NAME/1 --ours localhost/NAME:TAG``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from deploy.engine import Engine, buildah_bud, detect_engine, image_exists, inspect_image
from deploy.image.base import cache_dir, import_base

log = logging.getLogger(__name__)

MLFLOW_BASE = "localhost/mlrelease-mlflow-base:bookworm"
MLFLOW_REF = "localhost/mlrelease-mlflow-generated:compare"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"  # the host's trust store (a TLS-inspecting proxy's CA included)


def mlflow_base(engine: Engine) -> str:
    """A bookworm base with python3, pip and nginx: what python:3.11-slim + MLflow's apt step provide."""
    if image_exists(engine, MLFLOW_BASE):
        return MLFLOW_BASE
    tarball = cache_dir() / "mlflow-base-bookworm.tar"
    if not tarball.is_file():
        packages = "python3,python3-pip,python3-venv,python-is-python3,nginx"
        subprocess.run(
            ["mmdebstrap", "--variant=apt", f"--include={packages}", "bookworm", str(tarball)],
            check=True,
            capture_output=True,
            timeout=900,
        )
    import_base(engine, tarball, MLFLOW_BASE)
    return MLFLOW_BASE


def generate(model_uri: str, dest: Path) -> Path:
    """Run ``mlflow models generate-dockerfile`` and point it at the local base; return the context folder."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "generate-dockerfile",
            "-m",
            model_uri,
            "-d",
            str(dest),
            "--env-manager",
            "local",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    dockerfile = dest / "Dockerfile"
    text = re.sub(r"^FROM .*$", f"FROM {MLFLOW_BASE}", dockerfile.read_text(), count=1, flags=re.M)
    text = text.replace("apt-get -y update && apt-get install -y --no-install-recommends nginx", "true")
    text = text.replace("RUN pip install", "RUN pip install --break-system-packages")
    text = text.replace(
        "FROM " + MLFLOW_BASE,
        f"FROM {MLFLOW_BASE}\nENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_FIND_LINKS=/opt/wheels PIP_CERT=/opt/host-ca.crt",
        1,
    )
    dockerfile.write_text(text)
    return dest


def build_mlflow_image(engine: Engine, model_uri: str) -> int:
    """Build MLflow's generated Dockerfile with the local torch CPU wheels mounted; return its size in bytes."""
    mlflow_base(engine)
    with tempfile.TemporaryDirectory(prefix="mlrelease-compare-") as tmp:
        context = generate(model_uri, Path(tmp) / "ctx")
        engine.run(
            *buildah_bud(engine),
            "-v",
            "/opt/wheels:/opt/wheels:ro",
            "-v",
            f"{HOST_CA}:/opt/host-ca.crt:ro",
            "-t",
            MLFLOW_REF,
            str(context),
            timeout=5400,
        )
    return int(str(inspect_image(engine, MLFLOW_REF)["size_bytes"]))


def main(argv: list[str] | None = None) -> int:
    """Print (and write) ours vs MLflow's image size."""
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--ours", required=True, help="our image reference (image_ref in reports/build.json)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bench_image_size.json"
    )
    args = parser.parse_args(argv)
    engine = detect_engine()
    ours = int(str(inspect_image(engine, args.ours)["size_bytes"]))
    theirs = build_mlflow_image(engine, args.model_uri)
    result = {
        "ours_ref": args.ours,
        "ours_mb": round(ours / 1e6, 1),
        "mlflow_ref": MLFLOW_REF,
        "mlflow_mb": round(theirs / 1e6, 1),
        "ratio": round(theirs / ours, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if theirs >= 2 * ours else 1


if __name__ == "__main__":
    sys.exit(main())
