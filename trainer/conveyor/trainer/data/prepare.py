"""Materialise a dataset once: the fixed split, normalisation from the train split, encoded labels.

`prepare(config, out)` reads `config.data.source`, checks it, splits it deterministically (seeded;
stratified by class when `data.split.stratify` and the task is classification), computes
normalisation statistics on the train split only (per feature for tables, per channel for images),
applies them to every split, encodes labels as 0..k-1 (string classes too; names kept in order in
the metadata) and writes `train/validation/test.npz` + `metadata.json` (see `artifacts`).

Sources larger than memory stream. A file or image folder whose loaded size (`sources.in_memory_size`:
rows x columns x 4 bytes for Parquet, the file size for CSV, images x 3 x side^2 x 4 for a folder) exceeds
`CONVEYOR_IN_MEMORY_BYTES` (default 2 GiB; 0 streams every file source) is never loaded whole: one pass
with pyarrow assigns each row to a split by a seeded hash of its row number, collects the classes and
the train split's statistics, and writes `train/validation/test.parquet` (`metadata.json` says
`storage: parquet`; see `conveyor.trainer.data.streaming`). On that path the split fractions and the
stratification are approximate (each row is assigned independently; classes land in each split in
proportion on average). Smaller sources take the exact, in-memory path above.

The output is written once: a complete directory (its `metadata.json` exists) is left alone, so every
trial and the evaluation see the very same split. It is assembled in a temporary sibling directory and
renamed into place, so a crash never leaves a half-written dataset that looks complete.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from conveyor.trainer.artifacts import (
    METADATA_FILE,
    SPLITS,
    DatasetMetadata,
    NormalizationStats,
    read_metadata,
)
from conveyor.trainer.config import SplitSpec, TaskType, TrainerConfig
from conveyor.trainer.data import DataError
from conveyor.trainer.data.sources import RawDataset, in_memory_size, load_source, resolve_uri

MIN_ROWS_PER_CLASS = 3  # one for each split when stratifying


def is_complete(out: Path) -> bool:
    if not (out / METADATA_FILE).is_file():
        return False
    return any(all((out / f"{s}.{suffix}").is_file() for s in SPLITS) for suffix in ("npz", "parquet"))


def prepare(config: TrainerConfig, out: Path) -> DatasetMetadata:
    """Write the prepared dataset to `out` unless it is already there; return its metadata."""
    if config.data.entrypoint:  # the user's dataset: metadata only; every trial reads the data itself
        from conveyor.trainer.data import datasets

        return datasets.prepare(config, out)
    if is_complete(out):
        return read_metadata(out)
    if should_stream(config):
        return prepare_streaming(config, out)
    task = config.task.type
    raw = load_source(config.data, task)
    check_finite(raw)
    y, classes = encode_labels(raw, task)
    parts = split_indices(
        y,
        config.data.split,
        stratify=config.data.split.stratify and task == "classification",
        classes=classes,
    )
    stats = normalization_stats(raw.x[parts["train"]], config.data.preprocessing.normalize, raw.input_kind)
    target_stats = NormalizationStats()
    if task == "regression":
        train_y = y[parts["train"]].astype(np.float64)
        target_stats = NormalizationStats(
            method="standard", shift=[float(train_y.mean())], scale=[float(train_y.std()) or 1.0]
        )
    meta = DatasetMetadata(
        task=task,
        source=config.data.source,
        feature_shape=list(raw.x.shape[1:]),
        input_kind=raw.input_kind,
        classes=classes,
        feature_names=raw.feature_names,
        sizes={name: int(index.size) for name, index in parts.items()},
        normalization=stats,
        target_normalization=target_stats,
    )
    arrays = {
        name: (normalize(raw.x[index], stats, raw.input_kind), y[index]) for name, index in parts.items()
    }
    write_dataset(out, meta, arrays)
    return read_metadata(out)


def load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 [n, *feature_shape], y int64 classes | float32 targets) of one prepared split, whole
    (a streamed split too: readers that must not hold it use `streaming`).

    The `.npz` is memory-mapped where it can be (`map_npz`), not read into each process's memory: the
    processes of a node share the file's pages in the page cache, each reads only the pages it
    touches, and nothing is copied before the first batch. The arrays are copy-on-write (writing to
    one changes neither the file nor another process's view)."""
    path = data_dir / f"{split}.npz"
    if not path.is_file() and (data_dir / f"{split}.parquet").is_file():
        from conveyor.trainer.data import streaming

        return streaming.load_split(data_dir, split)
    mapped = map_npz(path)
    if mapped is not None and {"x", "y"} <= mapped.keys():
        return mapped["x"], mapped["y"]
    with np.load(path) as arrays:
        return arrays["x"], arrays["y"]


def map_npz(path: Path) -> dict[str, np.ndarray] | None:
    """Every array of an uncompressed `.npz` (what `np.savez` writes) as a copy-on-write memory map of
    its bytes inside the archive, or None when one cannot be mapped (compressed, object or empty
    arrays): then `np.load` reads it. Each member of a stored zip is a plain `.npy` file at an offset."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
    arrays: dict[str, np.ndarray] = {}
    with path.open("rb") as handle:
        for member in members:
            if member.compress_type != zipfile.ZIP_STORED or not member.filename.endswith(".npy"):
                return None
            handle.seek(member.header_offset)
            header = handle.read(30)  # the local file header; its name and extra field follow
            if header[:4] != b"PK\x03\x04":
                return None
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            handle.seek(member.header_offset + 30 + name_length + extra_length)
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                return None
            if dtype.hasobject or math.prod(shape) == 0:
                return None
            order: Literal["C", "F"] = "F" if fortran else "C"
            mapped = np.memmap(path, dtype=dtype, mode="c", offset=handle.tell(), shape=shape, order=order)
            arrays[member.filename[: -len(".npy")]] = mapped.view(np.ndarray)  # a plain array to readers
    return arrays


def should_stream(config: TrainerConfig) -> bool:
    """Whether the source is larger than CONVEYOR_IN_MEMORY_BYTES (never for builtin sets)."""
    from conveyor.trainer.data.streaming import in_memory_bytes

    size = in_memory_size(config.data)
    return size is not None and size > in_memory_bytes()


def prepare_streaming(config: TrainerConfig, out: Path) -> DatasetMetadata:
    """The one-pass path for sources larger than memory (`conveyor.trainer.data.streaming`)."""
    from conveyor.trainer.data import streaming

    def write(staging: Path) -> list[str]:
        meta = streaming.prepare_streaming(config, resolve_uri(config.data.source), staging)
        (staging / METADATA_FILE).write_text(meta.model_dump_json(indent=1))
        return [f"{s}.parquet" for s in SPLITS]

    publish(out, write)
    return read_metadata(out)


# --- checks and encoding ----------------------------------------------------------------------


def check_finite(raw: RawDataset) -> None:
    if raw.x.shape[0] == 0:
        raise DataError("the data source has no rows")
    bad = ~np.isfinite(raw.x.reshape(raw.x.shape[0], -1))
    if not bad.any():
        return
    counts = bad.sum(axis=0)
    names = raw.feature_names or [f"feature {i}" for i in range(counts.size)]
    parts = [f"{names[i]!r}: {int(counts[i])} rows" for i in np.flatnonzero(counts)[:10]]
    raise DataError(
        f"the features hold NaN or infinite values in {'; '.join(parts)}; fill or drop those rows"
    )


def encode_labels(raw: RawDataset, task: TaskType) -> tuple[np.ndarray, list[str]]:
    """Labels as int64 0..k-1 with class names (classification) or float32 targets (regression)."""
    y = np.asarray(raw.y)
    if task == "regression":
        if not np.issubdtype(y.dtype, np.number):
            raise DataError(
                "the target holds non-numeric values (e.g. "
                f"{', '.join(map(repr, np.unique(y.astype(str))[:3]))}); a regression needs numbers — "
                "or set task.type: classification"
            )
        return y.astype(np.float32), []
    if raw.class_names is not None and np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64), list(raw.class_names)
    if np.issubdtype(y.dtype, np.floating) and np.any(y != np.round(y)):
        raise DataError(
            "the target holds fractional numbers, which look like a regression target; "
            "set task.type: regression (or give class labels)"
        )
    if np.issubdtype(y.dtype, np.number):
        values, encoded = np.unique(y, return_inverse=True)
        names = [str(int(v)) if float(v).is_integer() else str(v) for v in values]
    else:
        values, encoded = np.unique(y.astype(str), return_inverse=True)
        names = [str(v) for v in values]
    if len(names) < 2:
        raise DataError(f"the target has a single class ({names[0]!r}); classification needs at least two")
    return encoded.astype(np.int64), names


def split_indices(
    y: np.ndarray, spec: SplitSpec, stratify: bool, classes: list[str]
) -> dict[str, np.ndarray]:
    """Seeded train/validation/test row indices; stratified by label when asked."""
    from sklearn.model_selection import train_test_split

    n = y.shape[0]
    n_test = math.ceil(spec.test * n)
    n_validation = math.ceil(spec.validation * n)
    if n - n_test - n_validation < 1 or min(n_test, n_validation) < 1:
        raise DataError(f"{n} rows are too few to split into train, validation and test; add rows")
    if stratify:
        counts = np.bincount(y, minlength=len(classes))
        small = [(classes[i], int(c)) for i, c in enumerate(counts) if c < MIN_ROWS_PER_CLASS]
        if small:
            listed = ", ".join(
                f"{name!r} has {count} row{'s' if count != 1 else ''}" for name, count in small
            )
            raise DataError(
                f"class {listed}; stratified splitting needs at least {MIN_ROWS_PER_CLASS} rows per class "
                "(one for each split): add rows, drop the class, or set data.split.stratify: false"
            )
        if min(n_test, n_validation) < len(classes):
            raise DataError(
                f"the test ({n_test} rows) or validation ({n_validation} rows) split is smaller than the "
                f"{len(classes)} classes, so it cannot hold each class; raise data.split.test/validation, "
                "add rows, or set data.split.stratify: false"
            )
    index = np.arange(n)
    try:
        rest, test = train_test_split(
            index, test_size=n_test, random_state=spec.seed, stratify=y if stratify else None
        )
        train, validation = train_test_split(
            rest, test_size=n_validation, random_state=spec.seed, stratify=y[rest] if stratify else None
        )
    except ValueError as error:
        raise DataError(
            f"cannot split the data as configured: {error}; set data.split.stratify: false"
        ) from error
    return {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}


# --- normalisation ----------------------------------------------------------------------------


def normalization_stats(x: np.ndarray, method: str, input_kind: str) -> NormalizationStats:
    if method == "none":
        return NormalizationStats(method="none")
    axes = (0, 2, 3) if input_kind == "image" else (0,)
    flat = x.astype(np.float64)
    if method == "standard":
        shift, scale = flat.mean(axis=axes), flat.std(axis=axes)
    else:
        shift = flat.min(axis=axes)
        scale = flat.max(axis=axes) - shift
    scale = np.where(scale > 1e-12, scale, 1.0)  # constant features stay constant (0) instead of NaN
    return NormalizationStats(
        method=method, shift=shift.reshape(-1).tolist(), scale=scale.reshape(-1).tolist()
    )


def normalize(x: np.ndarray, stats: NormalizationStats, input_kind: str) -> np.ndarray:
    if stats.method == "none":
        return np.ascontiguousarray(x, dtype=np.float32)
    shape = (1, -1, 1, 1) if input_kind == "image" else (1, -1)
    shift = np.asarray(stats.shift, dtype=np.float32).reshape(shape)
    scale = np.asarray(stats.scale, dtype=np.float32).reshape(shape)
    return np.ascontiguousarray((x - shift) / scale, dtype=np.float32)


# --- writing ----------------------------------------------------------------------------------


def write_dataset(out: Path, meta: DatasetMetadata, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Write the in-memory splits as `<split>.npz` and the metadata, through `publish`."""

    def write(staging: Path) -> list[str]:
        for name, (x, y) in arrays.items():
            with (staging / f"{name}.npz").open("wb") as handle:
                np.savez(handle, x=x, y=y)
                handle.flush()
                os.fsync(handle.fileno())
        (staging / METADATA_FILE).write_text(meta.model_dump_json(indent=1))
        return [f"{s}.npz" for s in SPLITS]

    publish(out, write)


def publish(out: Path, write: Callable[[Path], list[str]]) -> None:
    """Assemble the dataset in a temporary sibling (`write` fills it and names its split files) and
    rename it into place, metadata last."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        files = write(staging)
        try:
            os.rename(staging, out)  # replaces `out` only if it is an empty directory
        except OSError:
            if is_complete(out):  # another preparer won the race: its identical split stands
                return
            # `out` is a non-empty or mounted directory: move the files in, metadata last.
            out.mkdir(parents=True, exist_ok=True)
            for name in (*files, METADATA_FILE):
                os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- the stage ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="TrainerConfig as inline JSON or a JSON/YAML file")
    parser.add_argument("--out", required=True, type=Path, help="dataset directory to write (once)")


def run(args: argparse.Namespace) -> int:
    from conveyor.trainer.config import load_config
    from conveyor.trainer.progress import main_print, write_result

    config = load_config(args.config)
    preflight_check(config, args.out, None)  # the first workload: the user's code, before any trial
    done = is_complete(args.out)
    meta = prepare(config, args.out)
    preflight_check(config, args.out, meta)
    state = "already prepared" if done else "prepared"
    main_print(
        f"{args.out}: {state} {meta.source} ({meta.task}, shape {meta.feature_shape}, sizes {meta.sizes})"
    )
    # Like every stage, a durable result (result.json + the termination message on Kubernetes, where
    # a Job that completes without one counts as failed).
    write_result(args.out, {"status": "succeeded", "task": meta.task, "sizes": dict(meta.sizes)})
    return 0


def preflight_check(config: TrainerConfig, out: Path, meta: DatasetMetadata | None) -> None:
    """`conveyor.trainer.preflight.check`, its failure also written as this workload's result. With
    `meta`: only a user model on a built-in source, whose shape is known once prepared."""
    from conveyor.trainer import preflight
    from conveyor.trainer.config import ConfigError
    from conveyor.trainer.progress import write_result

    if meta is not None and not (config.model.entrypoint and not config.data.entrypoint):
        return
    try:
        preflight.check(config, meta)
    except (ConfigError, DataError) as error:
        write_result(out, {"status": "failed", "reason": "InvalidConfig", "message": str(error)[:2000]})
        raise
