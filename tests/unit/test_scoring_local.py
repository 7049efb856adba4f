"""The local scoring engine with a real TorchScript bundle, in this process: predictions are the model's own, rows
that break the contract go to the rejects with their reason, keys travel with every row, and the chunk size
changes nothing. Also the checks of files and keys a run makes before it scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deploy.serving.model import LoadedModel, load_model
from mlrelease.core.modelcard import ModelCard
from mlrelease.core.progress import Progress
from pipelines.schema import DataContract, load_contract
from scoring.contract import OUTPUT_REASON, scoring_contract
from scoring.formats import ScoringInputError
from scoring.local import score_local
from scoring.model import VersionRef
from scoring.plan import ScoreJob, ScorePlan, ScoreResult, check_files, choose_keys, input_columns
from tests.serving_helpers import REPO, breast_cancer, shared_bundle


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(shared_bundle(tmp_path_factory, seed=0), version="3")


def make_plan(job: ScoreJob, card: ModelCard, contract: DataContract | None = None) -> ScorePlan:
    """The plan `mlrelease score` would make for ``job``, with the card's version in place of the registry's."""
    in_format, out_format = check_files(job)
    columns = input_columns(job.input, in_format)
    rules = scoring_contract(contract or load_contract(REPO / "schemas" / "breast_cancer.yaml"), card, "test")
    ref = VersionRef(card.name, "3", card.sha256, {}, f"models:/{card.name}/3")
    keys = choose_keys(columns, rules, job.keys, card.classes)
    return ScorePlan(job, in_format, out_format, columns, ref, rules, keys, card.classes)


def run(job: ScoreJob, model: LoadedModel, contract: DataContract | None = None) -> ScoreResult:
    plan = make_plan(job, model.card, contract)
    result = ScoreResult("local", plan.ref, job.output, job.rejects_path)
    score_local(plan, model, result, Progress("score", None, "rows"))
    return result


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def sample(rows: int = 40) -> pd.DataFrame:
    """Keyed rows of the breast-cancer set with a target column and four rows that break the contract."""
    x, y, names = breast_cancer()
    frame = pd.DataFrame(x[:rows].astype(np.float64), columns=names)
    frame.insert(0, "id", [f"r{i}" for i in range(rows)])
    frame["target"] = y[:rows]
    frame.loc[3, "mean radius"] = np.nan
    frame.loc[8, "mean texture"] = np.inf
    frame.loc[21, "worst area"] = -5.0
    frame.loc[33, ["mean radius", "mean area"]] = [1e6, 1e7]
    return frame


BROKEN = {
    "r3": "mean radius: missing",
    "r8": "mean texture: infinite",
    "r21": "worst area: below min 0.0",
    "r33": "mean radius: above max 33.39225; mean area: above max 3090.375",
}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_valid_rows_get_the_models_own_numbers_and_the_rest_their_reason(
    tmp_path: Path, model: LoadedModel, suffix: str
) -> None:
    frame = sample()
    source = tmp_path / f"in{suffix}"
    frame.to_csv(source, index=False) if suffix == ".csv" else frame.to_parquet(source, index=False)
    result = run(ScoreJob("models:/m/3", source, tmp_path / f"out{suffix}", chunk_rows=7), model)
    assert (result.rows, result.scored, result.rejected) == (40, 36, 4)
    out, rejects = read(tmp_path / f"out{suffix}"), read(tmp_path / f"out.rejects{suffix}")
    assert dict(zip(rejects["id"], rejects["reason"], strict=True)) == BROKEN
    valid = frame[~frame["id"].isin(list(BROKEN))]
    assert out["id"].tolist() == valid["id"].tolist()  # the input's order, chunk after chunk
    expected = model.predict(np.array(valid[model.card.feature_names], dtype=np.float32))
    probabilities = out[[f"probability_{c}" for c in model.card.classes]].to_numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert out["prediction"].tolist() == [model.card.classes[k] for k in expected.argmax(axis=1)]
    assert set(out["model_version"].astype(str)) == {"3"} and set(out["artifact_sha256"]) == {model.sha256}
    assert result.reasons == {reason: 1 for reason in BROKEN.values()}


def test_the_chunk_size_changes_nothing(tmp_path: Path, model: LoadedModel) -> None:
    source = tmp_path / "in.parquet"
    sample().to_parquet(source, index=False)
    small = run(ScoreJob("models:/m/3", source, tmp_path / "a.parquet", chunk_rows=3), model)
    whole = run(ScoreJob("models:/m/3", source, tmp_path / "b.parquet", chunk_rows=1000), model)
    assert (small.scored, small.rejected) == (whole.scored, whole.rejected)
    pd.testing.assert_frame_equal(read(tmp_path / "a.parquet"), read(tmp_path / "b.parquet"))
    pd.testing.assert_frame_equal(read(tmp_path / "a.rejects.parquet"), read(tmp_path / "b.rejects.parquet"))


def test_without_a_key_column_the_row_number_is_the_key(tmp_path: Path, model: LoadedModel) -> None:
    source = tmp_path / "in.csv"
    sample().drop(columns=["id"]).to_csv(source, index=False)
    run(ScoreJob("models:/m/3", source, tmp_path / "out.csv", chunk_rows=6), model)
    out, rejects = read(tmp_path / "out.csv"), read(tmp_path / "out.rejects.csv")
    assert list(out.columns[:2]) == ["row", "prediction"]
    assert rejects["row"].tolist() == [3, 8, 21, 33] and out["row"].tolist() == sorted(set(range(40)) - {3, 8, 21, 33})


def test_a_row_the_model_answers_with_nan_is_rejected_not_scored(tmp_path: Path, model: LoadedModel) -> None:
    """Finite inputs far beyond what the model was trained on overflow float32 inside it; the server answers such
    a row 422, and the batch rejects it (the contract here has no bounds)."""
    open_contract = load_contract(REPO / "schemas" / "breast_cancer.yaml").model_copy(deep=True)
    features = [f.model_copy(update={"min": None, "max": None}) for f in open_contract.features]
    contract = open_contract.model_copy(update={"features": features})
    card = model.card
    tiny = card.feature_names[int(np.argmin(card.preprocessing.scale))]  # standardising by it overflows float32
    frame = sample().iloc[10:15].copy()
    frame.loc[:, tiny] = [0.1, 3e38, 0.1, -3e38, 0.1]
    source = tmp_path / "in.parquet"
    frame.to_parquet(source, index=False)
    result = run(ScoreJob("models:/m/3", source, tmp_path / "out.parquet"), model, contract)
    rejects = read(tmp_path / "out.rejects.parquet")
    assert rejects.to_dict("list") == {"id": ["r11", "r13"], "reason": [OUTPUT_REASON, OUTPUT_REASON]}
    assert result.scored == 3 and np.isfinite(read(tmp_path / "out.parquet").filter(like="probability")).all().all()


def test_keys_are_chosen_or_refused(tmp_path: Path, model: LoadedModel) -> None:
    source = tmp_path / "in.csv"
    sample().assign(batch="b1").to_csv(source, index=False)
    assert make_plan(ScoreJob("m", source, tmp_path / "o.csv"), model.card).keys == ["id", "batch"]
    assert make_plan(ScoreJob("m", source, tmp_path / "o.csv", keys=("batch",)), model.card).keys == ["batch"]
    with pytest.raises(ScoringInputError, match="--key nope: not a column of the input"):
        make_plan(ScoreJob("m", source, tmp_path / "o.csv", keys=("nope",)), model.card)
    sample().rename(columns={"id": "prediction"}).to_csv(source, index=False)
    with pytest.raises(ScoringInputError, match=r"\['prediction'\] clash with the prediction's own columns"):
        make_plan(ScoreJob("m", source, tmp_path / "o.csv"), model.card)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"engine": "spark"}, "--engine spark reads and writes Parquet"),
        ({"rejects": Path("r.parquet")}, r"use the format of --output \(csv\)"),
        ({"output": Path("in.csv")}, "name a file other than the input"),
        ({"output": Path("no/such/out.csv")}, "no/such"),
    ],
)
def test_files_are_checked_before_anything_is_scored(tmp_path: Path, change: dict, said: str) -> None:
    source = tmp_path / "in.csv"
    sample(3).to_csv(source, index=False)
    placed = {key: tmp_path / value if isinstance(value, Path) else value for key, value in change.items()}
    fields = {"output": tmp_path / "out.csv", **placed}
    with pytest.raises((ScoringInputError, FileNotFoundError), match=said):
        check_files(ScoreJob("m", source, **fields))
