"""Reading raw data from a `data.source`: builtin sets, generated data, tables and image folders.

`load_source(spec, task)` returns a `RawDataset` of float32 features and raw labels (numbers or
strings; `prepare` encodes them). Sources:

- `builtin://digits|iris|wine|breast-cancer|diabetes`: scikit-learn's shipped data (no download).
  `digits` are images `[1, 8, 8]` so convolutional and sequence models see their layout; the others
  are tabular. `diabetes` is the one regression set.
- `builtin://synthetic`: generated from `data.synthetic` with the split seed — scikit-learn's
  `make_classification` / `make_regression`, or `kind: image`: one-channel images, one smooth random
  pattern per class, shifted by a pixel and noised per sample.
- A CSV or Parquet file through fsspec (a path, `file://`, `s3://`, `gs://`, `http(s)://`) with the
  label in the `data.target` column and numeric features in every other column. Object stores need
  their fsspec package (s3fs, gcsfs, ...) in the image and read credentials from the environment (on
  Kubernetes: `data.credentialsSecret`).
- A class-per-folder image tree (`root/<class>/<image>.png|jpg|...`), resized to `data.imageSize`
  (default 32) and scaled to [0, 1]; grayscale when every image is, RGB otherwise.
- Files and folders larger than `CONVEYOR_IN_MEMORY_BYTES` by `in_memory_size` are not loaded here:
  `prepare` streams them (`conveyor.trainer.data.streaming`).
- `pvc://NAME/PATH`: a PersistentVolumeClaim, read at `$CONVEYOR_PVC_ROOT/NAME/PATH` (default root
  `/mnt/pvc`). On Kubernetes the prepare pod mounts claim NAME read-only there and sets the variable;
  for `conveyor run`, export CONVEYOR_PVC_ROOT to a directory that holds NAME/.

Problems a user can fix (missing column, text features, NaNs, empty files) raise `DataError`.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from conveyor.trainer.config import (
    DEFAULT_PVC_ROOT,
    PVC_ROOT_ENV,
    PVC_SCHEME,
    DataSpec,
    SyntheticSpec,
    TaskType,
    split_pvc,
)
from conveyor.trainer.data import DataError

DEFAULT_IMAGE_SIZE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".csv.gz")


@dataclass
class RawDataset:
    x: np.ndarray  # float32 [n, *feature_shape]
    y: np.ndarray  # labels as read: numbers or strings, [n]
    input_kind: Literal["tabular", "image"]
    feature_names: list[str] = field(default_factory=list)
    class_names: list[str] | None = None  # names for integer labels 0..k-1, when the source has them


def load_source(spec: DataSpec, task: TaskType) -> RawDataset:
    source = spec.source
    if source.startswith("builtin://"):
        return load_builtin(source.removeprefix("builtin://"), spec, task)
    return load_uri(resolve_uri(source), spec)


# --- builtin ----------------------------------------------------------------------------------

SKLEARN_LOADERS = {
    "digits": "load_digits",
    "iris": "load_iris",
    "wine": "load_wine",
    "breast-cancer": "load_breast_cancer",
    "diabetes": "load_diabetes",
}
REGRESSION_BUILTINS = frozenset({"diabetes"})


def load_builtin(name: str, spec: DataSpec, task: TaskType) -> RawDataset:
    if name == "synthetic":
        return synthetic(spec.synthetic, task, spec.split.seed)
    if name not in SKLEARN_LOADERS:
        known = ", ".join(f"builtin://{n}" for n in (*SKLEARN_LOADERS, "synthetic"))
        raise DataError(f"unknown builtin dataset {name!r}; use one of: {known}")
    kind = "regression" if name in REGRESSION_BUILTINS else "classification"
    if kind != task:
        raise DataError(
            f"builtin://{name} is a {kind} dataset but task.type is {task}; set task.type: {kind}"
        )
    from sklearn import datasets

    bunch: Any = getattr(datasets, SKLEARN_LOADERS[name])()
    if name == "digits":
        x = bunch.images.astype(np.float32)[:, None, :, :]  # [n, 1, 8, 8], values 0..16
        return RawDataset(x, bunch.target, "image", [], [str(c) for c in bunch.target_names])
    classes = [str(c) for c in bunch.target_names] if kind == "classification" else None
    return RawDataset(
        bunch.data.astype(np.float32), bunch.target, "tabular", list(bunch.feature_names), classes
    )


def synthetic(spec: SyntheticSpec, task: TaskType, seed: int) -> RawDataset:
    from sklearn import datasets

    if spec.kind == "regression" or task == "regression":
        if spec.kind == "image":
            raise DataError("synthetic images are a classification set; set data.synthetic.kind: regression")
        x, y = datasets.make_regression(
            n_samples=spec.samples,
            n_features=spec.features,
            n_informative=max(1, spec.features // 2),
            random_state=seed,
        )
        rng = np.random.default_rng(seed)
        y = y + spec.noise * float(np.std(y)) * rng.standard_normal(y.shape)
        names = [f"x{i}" for i in range(spec.features)]
        return RawDataset(x.astype(np.float32), y.astype(np.float32), "tabular", names)
    if spec.kind == "image":
        return synthetic_images(spec, seed)
    informative = min(spec.features, max(2, spec.features // 2, math.ceil(math.log2(spec.classes)) + 1))
    clusters = 2 if spec.classes * 2 <= 2**informative else 1
    if spec.classes * clusters > 2**informative:
        raise DataError(
            f"synthetic classification with {spec.classes} classes needs at least "
            f"{math.ceil(math.log2(spec.classes))} features; raise data.synthetic.features"
        )
    x, y = datasets.make_classification(
        n_samples=spec.samples,
        n_features=spec.features,
        n_informative=informative,
        n_redundant=min(spec.features - informative, spec.features // 4),
        n_classes=spec.classes,
        n_clusters_per_class=clusters,
        flip_y=min(spec.noise, 0.5),
        random_state=seed,
    )
    names = [f"x{i}" for i in range(spec.features)]
    return RawDataset(x.astype(np.float32), y, "tabular", names, [str(c) for c in range(spec.classes)])


def synthetic_images(spec: SyntheticSpec, seed: int) -> RawDataset:
    """One smooth random pattern per class; each sample is its class pattern shifted, scaled and noised."""
    rng = np.random.default_rng(seed)
    size = spec.image_size
    coarse = rng.random((spec.classes, (size + 1) // 2, (size + 1) // 2))
    patterns = coarse.repeat(2, axis=1).repeat(2, axis=2)[:, :size, :size]
    y = np.arange(spec.samples) % spec.classes
    rng.shuffle(y)
    shifts = rng.integers(-1, 2, size=(spec.samples, 2))
    x = np.empty((spec.samples, 1, size, size), dtype=np.float32)
    for label in range(spec.classes):  # vectorised per (class, shift): 9 shifts at most
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                rows = (y == label) & (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
                x[rows, 0] = np.roll(patterns[label], (dy, dx), axis=(0, 1))
    x *= rng.uniform(0.7, 1.3, size=(spec.samples, 1, 1, 1)).astype(np.float32)
    x += (spec.noise * rng.standard_normal(x.shape)).astype(np.float32)
    return RawDataset(x, y, "image", [], [str(c) for c in range(spec.classes)])


# --- files ------------------------------------------------------------------------------------


def resolve_uri(source: str) -> str:
    """`pvc://NAME/PATH` -> the mounted path; everything else is handed to fsspec unchanged."""
    if source.startswith(PVC_SCHEME):
        name, rest = split_pvc(source)
        if not name:
            raise DataError(f"source {source!r} names no volume; write pvc://CLAIM-NAME/path/in/volume")
        return str(Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT)) / name / rest)
    return source


def open_uri(uri: str) -> tuple[Any, str, bool]:
    """(filesystem, path, is a folder) of a file or folder source that exists and can be read."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
        is_dir = fs.isdir(path)
        exists = is_dir or fs.exists(path)
    except (ImportError, ValueError) as error:
        raise DataError(f"cannot open {uri!r}: {error}") from error
    if not exists:
        raise DataError(f"data source {uri!r} does not exist; check data.source (and the volume mount)")
    if not is_dir and not path.lower().endswith(TABLE_SUFFIXES):
        raise DataError(
            f"{uri!r} is neither a CSV/Parquet file ({', '.join(TABLE_SUFFIXES)}) nor a folder of images"
        )
    return fs, path, is_dir


def in_memory_size(spec: DataSpec) -> int | None:
    """About how many bytes the source takes loaded (None for builtin sets, which always fit): rows x
    columns x 4 for Parquet (from its footer), the file size for CSV, images x 3 x side^2 x 4 for a
    folder (listed, not opened)."""
    if spec.source.startswith("builtin://"):
        return None
    uri = resolve_uri(spec.source)
    fs, path, is_dir = open_uri(uri)
    if is_dir:
        side = spec.image_size or DEFAULT_IMAGE_SIZE
        return len(image_files(fs, path, uri)[1]) * 3 * side * side * 4
    if path.lower().endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        try:
            with fs.open(path, "rb") as handle:
                metadata = pq.ParquetFile(handle).metadata
        except Exception as error:  # pyarrow raises several kinds for a file that is not Parquet
            raise DataError(f"{uri!r} could not be parsed as a table: {error}") from error
        return int(metadata.num_rows) * int(metadata.num_columns) * 4
    return int(fs.size(path))


def load_uri(uri: str, spec: DataSpec) -> RawDataset:
    fs, path, is_dir = open_uri(uri)
    if is_dir:
        return load_image_folder(fs, path, spec.image_size or DEFAULT_IMAGE_SIZE, uri)
    lower = path.lower()
    with fs.open(path, "rb") as handle:
        raw = handle.read()
    if not raw.strip():
        raise DataError(f"{uri!r} is empty; it needs a header row and at least one data row")
    return table_dataset(read_table(raw, lower, uri), spec.target, uri)


def read_table(raw: bytes, name: str, uri: str) -> Any:
    import pandas as pd

    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(io.BytesIO(raw))
        compression = "gzip" if name.endswith(".gz") else None
        return pd.read_csv(
            io.BytesIO(raw), sep="\t" if name.endswith(".tsv") else ",", compression=compression
        )
    except pd.errors.EmptyDataError as error:
        raise DataError(f"{uri!r} is empty; it needs a header row and at least one data row") from error
    except (pd.errors.ParserError, OSError, ValueError) as error:
        raise DataError(f"{uri!r} could not be parsed as a table: {error}") from error


def table_dataset(frame: Any, target: str, uri: str) -> RawDataset:
    import pandas as pd

    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if target not in columns:
        raise DataError(
            f"{uri!r} has no target column {target!r}; available columns: {', '.join(columns)}. "
            "Set data.target to the label column"
        )
    if len(frame) == 0:
        raise DataError(f"{uri!r} has a header but no data rows")
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise DataError(f"{uri!r} has only the target column {target!r}; it needs feature columns too")
    text = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if text:
        raise DataError(
            f"{uri!r}: non-numeric feature columns {', '.join(repr(c) for c in text)}; "
            "encode them as numbers (e.g. one-hot) or drop them"
        )
    missing = features.isna().sum()
    missing = missing[missing > 0]
    target_missing = int(frame[target].isna().sum())
    if len(missing) or target_missing:
        parts = [f"{c!r}: {int(n)} rows" for c, n in missing.items()]
        if target_missing:
            parts.append(f"target {target!r}: {target_missing} rows")
        raise DataError(
            f"{uri!r} has missing values (NaN) in {'; '.join(parts)}; fill or drop those rows before training"
        )
    return RawDataset(
        features.to_numpy(dtype=np.float32), frame[target].to_numpy(), "tabular", list(features.columns)
    )


def image_files(fs: Any, root: str, uri: str) -> tuple[list[str], list[tuple[str, int]]]:
    """The class names (sorted sub-folders) and the (path, class index) of every image, in order."""
    classes = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False) if fs.isdir(p))
    files: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        for path in sorted(fs.ls(f"{root.rstrip('/')}/{name}", detail=False)):
            if path.lower().endswith(IMAGE_SUFFIXES):
                files.append((path, label))
    if not files:
        raise DataError(
            f"{uri!r} is a folder without images; expected one sub-folder per class holding "
            f"{'/'.join(s.lstrip('.') for s in IMAGE_SUFFIXES)} files "
            "(or point data.source at a CSV/Parquet file)"
        )
    return classes, files


def open_image(fs: Any, path: str) -> Any:
    """One image file, decoded (PIL), or a DataError naming the file."""
    from PIL import Image

    with fs.open(path, "rb") as handle:
        try:
            image = Image.open(io.BytesIO(handle.read()))
            image.load()
        except OSError as error:
            raise DataError(f"{path!r} is not a readable image: {error}") from error
    return image


def load_image_folder(fs: Any, root: str, size: int, uri: str) -> RawDataset:
    classes, files = image_files(fs, root, uri)
    images = [open_image(fs, path) for path, _ in files]
    mode = "L" if all(i.mode in ("1", "L", "LA", "I", "I;16", "F") for i in images) else "RGB"
    x = np.stack([np.asarray(i.convert(mode).resize((size, size)), dtype=np.float32) / 255.0 for i in images])
    x = x[:, None] if mode == "L" else x.transpose(0, 3, 1, 2)
    y = np.array([label for _, label in files])
    return RawDataset(np.ascontiguousarray(x), y, "image", [], classes)
