"""What can be wrong with a source on the streaming path, found block by block during the one pass
(`stream_prepare`) and reported as a `DataError` that names the column or value and the fix — the
same problems `prepare` reports for a source in memory, caught before any split file is kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from conveyor.trainer.data import DataError

MAX_CLASSES = 100_000


def check_columns(schema: pa.Schema, target: str, uri: str) -> list[str]:
    columns = [str(c) for c in schema.names]
    if target not in columns:
        raise DataError(
            f"{uri!r} has no target column {target!r}; available columns: {', '.join(columns)}. "
            "Set data.target to the label column"
        )
    features = [c for c in columns if c != target]
    if not features:
        raise DataError(f"{uri!r} has only the target column {target!r}; it needs feature columns too")
    kinds = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
    text = [c for c in features if not any(kind(schema.field(c).type) for kind in kinds)]
    if text:
        raise DataError(
            f"{uri!r}: non-numeric feature columns {', '.join(repr(c) for c in text)}; "
            "encode them as numbers (e.g. one-hot) or drop them"
        )
    return features


def check_missing(batch: pa.RecordBatch, features: list[str], target: str, uri: str) -> None:
    parts = []
    for name in [*features, target]:
        column = batch.column(name)
        missing = column.null_count
        if pa.types.is_floating(column.type):
            missing += int(pc.sum(pc.is_nan(column)).as_py() or 0)
        if missing:
            parts.append(f"{'target ' if name == target else ''}{name!r}: {missing} rows")
    if parts:
        raise DataError(
            f"{uri!r} has missing values (NaN) in {'; '.join(parts)} (counted in the block being read); "
            "fill or drop those rows before training"
        )


def check_finite(x: np.ndarray, names: list[str]) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        counts = bad.sum(axis=0)
        parts = [f"{names[i]!r}: {int(counts[i])} rows" for i in np.flatnonzero(counts)[:10]]
        raise DataError(
            f"the features hold NaN or infinite values in {'; '.join(parts)}; fill or drop those rows"
        )


def check_labels(seen: list[Any], numeric: bool, known: int, target: str) -> list[Any]:
    if numeric and any(float(v) != round(float(v)) for v in seen):
        raise DataError(
            "the target holds fractional numbers, which look like a regression target; "
            "set task.type: regression (or give class labels)"
        )
    if known + len(seen) > MAX_CLASSES and len(seen) > 0:
        raise DataError(
            f"the target {target!r} has more than {MAX_CLASSES} distinct values; a classification needs "
            "class labels — or set task.type: regression"
        )
    return seen


def check_sizes(sizes: dict[str, int], rows: int) -> None:
    empty = [name for name, size in sizes.items() if size == 0]
    if empty:
        raise DataError(
            f"{rows} rows left the {' and '.join(empty)} split empty; add rows or raise "
            "data.split.validation/test"
        )


def class_names(labels: set[Any], numeric: bool) -> list[str]:
    """Class names in the order `prepare.encode_labels` gives them: sorted values, integers as ints."""
    if numeric:
        values = sorted({float(v) for v in labels})
        names = [str(int(v)) if v.is_integer() else str(v) for v in values]
    else:
        names = sorted(str(v) for v in labels)
    if len(names) < 2:
        raise DataError(
            f"the target has a single class ({(names or [''])[0]!r}); classification needs at least two"
        )
    return names
