"""`mlrelease score` against the version the pipeline registered: the local engine gives a real server's numbers
for the same rows, and the Spark engine (local[2], a generated Parquet file of 200,000 rows) gives the local
engine's predictions and rejects the same rows for the same reasons."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mlrelease.cli import app
from mlrelease.core.progress import Progress, progress
from mlrelease.core.settings import Settings, get_settings
from scoring.job import ScoreJob, score
from tests.serving_helpers import run_server
from tests.workspace import Workspace

pytestmark = pytest.mark.integration
SPARK_ROWS = 200_000


def quiet(label: str, total: int | None, unit: str) -> AbstractContextManager[Progress]:
    return progress(label, total, unit=unit, log=logging.getLogger("test.score"))


@pytest.fixture
def cli_home(built_workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The CLI run in this process against the built workspace (settings read afresh, then forgotten)."""
    monkeypatch.setenv("MLRELEASE_HOME", str(built_workspace.root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    yield built_workspace.root
    get_settings.cache_clear()


def test_the_local_engine_gives_the_servers_numbers(
    cli_home: Path, registration: dict[str, object], tmp_path: Path
) -> None:
    uri = f"models:/{registration['model_name']}/{registration['version']}"
    rows = pd.read_csv(cli_home / "data" / "prepared" / "test.csv")
    broken = rows.iloc[:2].copy()
    broken.loc[:, "mean radius"] = [np.nan, 1e6]
    pd.concat([rows, broken], ignore_index=True).to_csv(tmp_path / "rows.csv", index=False)
    args = ["score", "--model", uri, "--input", str(tmp_path / "rows.csv"), "--output", str(tmp_path / "out.csv")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"version {registration['version']} (local): {len(rows)} rows scored, 2 rejected" in result.stdout
    out, rejects = pd.read_csv(tmp_path / "out.csv"), pd.read_csv(tmp_path / "out.rejects.csv")
    n = len(rows)
    assert out["row"].tolist() == list(range(n)) and rejects["row"].tolist() == [n, n + 1]
    assert rejects["reason"].tolist() == ["mean radius: missing", "mean radius: above max 33.39225"]
    assert set(out["artifact_sha256"]) == {registration["artifact_sha256"]}

    features = rows.drop(columns=["target"])
    with run_server(None, tmp_path, args=("--model-uri", uri), home=str(cli_home)) as server:
        name = registration["model_name"]
        body = {"instances": features.to_numpy().tolist()}
        answer = httpx.post(f"{server.url}/v1/models/{name}:predict", json=body, timeout=30).json()
    served = np.array([p["probabilities"] for p in answer["predictions"]])
    classes = [c.removeprefix("probability_") for c in out.columns if c.startswith("probability_")]
    np.testing.assert_allclose(out[[f"probability_{c}" for c in classes]].to_numpy(), served, atol=1e-6)
    assert out["prediction"].astype(str).tolist() == [str(p["class"]) for p in answer["predictions"]]
    assert answer["model_version"] == str(registration["version"])


def test_an_unset_alias_is_named_with_the_aliases_there_are(
    cli_home: Path, registration: dict[str, object], tmp_path: Path
) -> None:
    source = cli_home / "data" / "prepared" / "test.csv"
    uri = f"models:/{registration['model_name']}@production"  # the pipeline sets candidate only
    result = CliRunner().invoke(app, ["score", "--model", uri, "--input", str(source), "--output", "x.csv"])
    assert result.exit_code == 2
    said = result.stderr.strip()
    assert said.startswith(f"mlrelease score: --model {uri}: not registered") and "candidate -> " in said, said


def generated_rows(path: Path, rows: int) -> dict[int, str]:
    """A deterministic Parquet file of breast-cancer rows with a little noise, keys ``id`` and ``batch``, and a
    few rows broken on purpose; returns those rows' ids with the reason both engines must give."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True).frame
    rng = np.random.default_rng(7)
    frame = data.iloc[rng.integers(0, len(data), rows)].reset_index(drop=True)
    features = [c for c in frame.columns if c != "target"]
    frame[features] = frame[features] * rng.uniform(0.98, 1.02, size=(rows, len(features)))
    frame.insert(0, "id", np.arange(rows, dtype=np.int64))
    frame.insert(1, "batch", [f"b{i % 7}" for i in range(rows)])
    breaks = {
        11: ("mean radius", np.nan, "mean radius: missing"),
        2_000: ("mean texture", np.inf, "mean texture: infinite"),
        50_000: ("worst area", -1.0, "worst area: below min 0.0"),
        123_456: ("mean radius", 1e9, "mean radius: above max 33.39225"),
    }
    for row, (column, value, _) in breaks.items():
        frame.loc[row, column] = value
    frame.loc[rows - 1, ["mean radius", "worst area"]] = [np.nan, 1e9]
    frame.to_parquet(path, index=False, row_group_size=50_000)
    expected = {row: reason for row, (_, _, reason) in breaks.items()}
    return {**expected, rows - 1: "mean radius: missing; worst area: above max 5271.2"}


def test_spark_scores_and_rejects_as_the_local_engine_does(
    built_workspace: Workspace, registration: dict[str, object], tmp_path: Path
) -> None:
    broken = generated_rows(tmp_path / "rows.parquet", SPARK_ROWS)
    settings = Settings(home=built_workspace.root)
    uri = f"models:/{registration['model_name']}@candidate"
    results = {}
    for engine in ("local", "spark"):
        job = ScoreJob(uri, tmp_path / "rows.parquet", tmp_path / f"{engine}.parquet", engine=engine)  # type: ignore[arg-type]
        results[engine] = score(job, settings, quiet)
    local, spark = results["local"], results["spark"]
    assert (spark.rows, spark.scored, spark.rejected) == (local.rows, local.scored, local.rejected)
    assert local.rows == SPARK_ROWS and local.rejected >= len(broken)

    def read(name: str) -> pd.DataFrame:
        return pd.read_parquet(tmp_path / name).sort_values("id", ignore_index=True)

    a, b = read("local.parquet"), read("spark.parquet")
    assert a["id"].tolist() == b["id"].tolist() and a["batch"].tolist() == b["batch"].tolist()
    probabilities = [c for c in a.columns if c.startswith("probability_")]
    np.testing.assert_allclose(b[probabilities].to_numpy(), a[probabilities].to_numpy(), atol=1e-6)
    assert (a["prediction"] == b["prediction"]).all()
    assert set(b["model_version"]) == {str(registration["version"])}
    assert set(b["artifact_sha256"]) == {registration["artifact_sha256"]}

    rejected_local, rejected_spark = read("local.rejects.parquet"), read("spark.rejects.parquet")
    assert rejected_spark.to_dict("list") == rejected_local.to_dict("list")
    reasons = dict(zip(rejected_local["id"], rejected_local["reason"], strict=True))
    assert {row: reasons.get(row) for row in broken} == broken
