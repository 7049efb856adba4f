"""A corpus of broken data files, each derived from the good default data by one realistic mistake."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer


def good_frame() -> pd.DataFrame:
    return load_breast_cancer(as_frame=True).frame


@dataclass(frozen=True)
class BadCase:
    """``make`` writes the broken file; the report must name ``column`` and a check containing ``check``."""

    name: str
    make: Callable[[Path], None]
    column: str
    check: str


def _csv(mutate: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        mutate(good_frame()).to_csv(path, index=False)

    return write


def _set(column: str, rows: slice, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        df[column] = df[column].astype(object)
        df.loc[df.index[rows], column] = value
        return df

    return mutate


def _text(content: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(content)

    return write


CASES = [
    BadCase("missing_column", _csv(lambda df: df.drop(columns=["mean radius"])), "mean radius", "column_in_dataframe"),
    BadCase(
        "extra_column", _csv(lambda df: df.assign(patient_id=np.arange(len(df)))), "patient_id", "column_in_schema"
    ),
    BadCase("non_numeric", _csv(_set("mean texture", slice(3, 6), "n/a?")), "mean texture", "coerce_dtype"),
    BadCase("nan_values", _csv(_set("mean area", slice(0, 4), np.nan)), "mean area", "not_nullable"),
    BadCase("inf_values", _csv(_set("mean smoothness", slice(10, 12), np.inf)), "mean smoothness", "finite"),
    BadCase("out_of_range", _csv(_set("mean radius", slice(0, 3), -5.0)), "mean radius", "greater_than"),
    BadCase("unknown_label", _csv(_set("target", slice(0, 2), 7)), "target", "isin"),
    BadCase("empty_file", _text(""), "<file>", "readable"),
    BadCase("header_only", _csv(lambda df: df.iloc[:0]), "<table>", "min_rows"),
    BadCase("too_few_rows", _csv(lambda df: df.iloc[:20]), "<table>", "min_rows"),
    BadCase(
        "too_many_duplicates",
        _csv(lambda df: pd.concat([df, df.iloc[:40]], ignore_index=True)),
        "<table>",
        "max_duplicate_fraction",
    ),
]
