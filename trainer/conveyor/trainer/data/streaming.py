"""Data larger than memory: prepared splits as Parquet, written in one pass and read a batch at a time.

A source too big to hold in memory (the threshold is `CONVEYOR_IN_MEMORY_BYTES`, see
`conveyor.trainer.data.prepare`) is prepared by `prepare_streaming`: one pass over the source with
pyarrow (Parquet record batches, `pyarrow.csv.open_csv` blocks, or the files of an image folder),
assigning each row to a split by a hash of (split seed, row number), collecting the classes and the train
split's normalisation statistics on the way, and appending each row to `<split>.parquet`. The statistics
exist only once the pass ends, so the files hold rows as read — the features as one `x` column of
float32 lists (tables) or the image's `path` (folders), and the raw label `y` — and readers normalise
and encode a batch at a time with the statistics in `metadata.json` (`storage: parquet`). Row groups
hold at most `ROW_GROUP_BYTES` of features, so no reader decodes much at once. The pass itself holds
one block of the source: a CSV block, or a slice of one Parquet row group (pyarrow decodes a row
group's columns whole), so its memory follows the source's row-group size, never its length.

Training reads the train split through `StreamingDataset`, an IterableDataset over fixed-size row ranges
("units", a row group each unless the split is small): each epoch permutes the units with a seed of
(seed, epoch), `shard`s them across ranks x DataLoader workers (every consumer gets the same number, the
uneven tail dropped, so every rank runs the same number of steps) and shuffles rows within windows of
`MIX_UNITS` units. The order depends only on the seed and the epoch, so a resumed run and a rerun see the
same batches. Validation (`load_streamed`) and evaluation (`iter_batches`) read their split in file
order; only labels and model outputs are held whole.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from conveyor.trainer.artifacts import METADATA_FILE, SPLITS, DatasetMetadata, NormalizationStats
from conveyor.trainer.data import DataError
from conveyor.trainer.validation import output_metrics

if TYPE_CHECKING:
    from conveyor.trainer import distributed
    from conveyor.trainer.config import TrainerConfig

IN_MEMORY_ENV = "CONVEYOR_IN_MEMORY_BYTES"
DEFAULT_IN_MEMORY_BYTES = 2 << 30
ROW_GROUP_BYTES = 4 << 20  # decoded features per row group: the most a reader holds of one group
MAX_ROW_GROUP_ROWS = 65536
MIN_UNITS_PER_CONSUMER = 4  # small splits get smaller units, so that no rank or worker goes without
PREFETCH_BATCHES = 4  # per DataLoader worker
MIX_UNITS = 4  # units shuffled together: a batch mixes rows from this many places in the file
VALIDATION_ROWS = 1024  # rows per forward pass of validation, as `validation.validate`
READ_ROWS = 16384  # rows per block read from a Parquet source: its temporaries stay a few MiB
CSV_BLOCK_BYTES = 8 << 20
MAX_CLASSES = 100_000
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
X_COLUMN, Y_COLUMN, PATH_COLUMN = "x", "y", "path"

T = TypeVar("T")
Augment = Callable[[torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def in_memory_bytes() -> int:
    """The largest source prepared in memory: $CONVEYOR_IN_MEMORY_BYTES, default 2 GiB (0 streams all)."""
    value = os.environ.get(IN_MEMORY_ENV, str(DEFAULT_IN_MEMORY_BYTES))
    try:
        limit = int(value)
    except ValueError:
        limit = -1
    if limit < 0:
        raise DataError(
            f"{IN_MEMORY_ENV}={value!r} is not a number of bytes; set it to an integer such as {2 << 30} "
            "(0 streams every file source)"
        )
    return limit


def split_file(data_dir: Path, split: str) -> Path:
    return data_dir / f"{split}.parquet"


# --- sharding -----------------------------------------------------------------------------------


def shard(items: Sequence[T], rank: int, world_size: int, worker: int = 0, workers: int = 1) -> list[T]:
    """The items of consumer (rank, worker) among world_size x workers: every consumer takes every
    (world_size * workers)-th item and all take the same number, so the uneven tail is dropped."""
    if world_size < 1 or workers < 1 or not 0 <= rank < world_size or not 0 <= worker < workers:
        raise ValueError(f"no consumer rank {rank} of {world_size}, worker {worker} of {workers}")
    consumers = world_size * workers
    each = len(items) // consumers
    return list(items[rank * workers + worker :: consumers][:each])


# --- split assignment and statistics -----------------------------------------------------------

_GOLDEN = 0x9E3779B97F4A7C15


def split_codes(rows: np.ndarray, seed: int, validation: float, test: float) -> np.ndarray:
    """0 (train), 1 (validation) or 2 (test) per row number: a splitmix64 hash of (seed, row), so a
    row's split depends on nothing else (not on the block it was read in)."""
    key = np.uint64((seed * _GOLDEN + 0x632BE59BD9B4E019) % (1 << 64))
    z = (rows.astype(np.uint64) ^ key) + np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.where(u < test, 2, np.where(u < test + validation, 1, 0)).astype(np.int8)


@dataclass
class RunningStats:
    """Per-column count, mean and sum of squared deviations (merged block by block, Chan et al.: no
    catastrophic cancellation over billions of rows), min and max."""

    count: int = 0
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    m2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    low: np.ndarray = field(default_factory=lambda: np.zeros(0))
    high: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def update(self, values: np.ndarray) -> None:
        """Add the rows of `values` [n, columns]."""
        n = values.shape[0]
        if n == 0:
            return
        low, high = values.min(axis=0).astype(np.float64), values.max(axis=0).astype(np.float64)
        deviations = values.astype(np.float64)
        mean = deviations.mean(axis=0)
        deviations -= mean
        m2 = np.einsum("ij,ij->j", deviations, deviations)
        if self.count == 0:
            self.count, self.mean, self.m2, self.low, self.high = n, mean, m2, low, high
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.low, self.high = np.minimum(self.low, low), np.maximum(self.high, high)
        self.count = total

    def normalization(self, method: str) -> NormalizationStats:
        """What `prepare.normalization_stats` computes on the whole split (population std)."""
        if method == "none" or self.count == 0:
            return NormalizationStats(method="none")
        if method == "standard":
            shift, scale = self.mean, np.sqrt(self.m2 / self.count)
        else:
            shift, scale = self.low, self.high - self.low
        scale = np.where(scale > 1e-12, scale, 1.0)
        return NormalizationStats(method=method, shift=shift.tolist(), scale=scale.tolist())


# --- the one pass -------------------------------------------------------------------------------


@dataclass
class SplitWriters:
    """One Parquet writer per split, writing row groups of exactly `group_rows` (the last one fewer)."""

    directory: Path
    schema: pa.Schema
    group_rows: int
    sizes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    writers: dict[str, pq.ParquetWriter] = field(default_factory=dict)
    pending: dict[str, list[pa.Table]] = field(default_factory=dict)

    def add(self, split: str, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.sizes[split] += table.num_rows
        pending = self.pending.setdefault(split, [])
        pending.append(table)
        if sum(t.num_rows for t in pending) >= self.group_rows:
            whole = pa.concat_tables(pending)
            full = (whole.num_rows // self.group_rows) * self.group_rows
            self.write(split, whole.slice(0, full))
            self.pending[split] = [whole.slice(full)]

    def close(self) -> None:
        for split in self.sizes:
            tables = [t for t in self.pending.get(split, []) if t.num_rows]
            if tables or split not in self.writers:
                self.write(split, pa.concat_tables(tables) if tables else self.schema.empty_table())
            self.writers[split].close()

    def write(self, split: str, table: pa.Table) -> None:
        if split not in self.writers:
            # Features are written plain: random-looking floats gain nothing from dictionaries or
            # compression, and every epoch pays for decoding them.
            self.writers[split] = pq.ParquetWriter(
                split_file(self.directory, split),
                self.schema,
                use_dictionary=[n for n in self.schema.names if n != X_COLUMN],
                compression={n: "none" if n == X_COLUMN else "snappy" for n in self.schema.names},
            )
        self.writers[split].write_table(table.combine_chunks(), row_group_size=self.group_rows)


def group_rows_for(row_bytes: int) -> int:
    return max(1, min(MAX_ROW_GROUP_ROWS, ROW_GROUP_BYTES // max(1, row_bytes)))


def prepare_streaming(config: TrainerConfig, uri: str, staging: Path) -> DatasetMetadata:
    """Write `<split>.parquet` for the file or folder at `uri` into `staging` in one pass and return the
    metadata (the caller writes it). Stratification is approximate here: rows are assigned to splits
    independently, so each class lands in each split in proportion only on average."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    if fs.isdir(path):
        return prepare_image_folder(config, fs, path, uri, staging)
    return prepare_table(config, fs, path, uri, staging)


def record_batches(fs: Any, path: str, uri: str, target: str) -> Iterator[pa.RecordBatch]:
    """The source's rows a block at a time: Parquet record batches or CSV blocks (CSV features read as
    float64, so a column whose first block holds only integers cannot fail a later block)."""
    import pyarrow.csv as pacsv

    lower = path.lower()
    names: list[str] = []
    try:
        if lower.endswith((".parquet", ".pq")):
            with fs.open(path, "rb") as handle:
                # Row group by row group: iterating the whole file at once keeps a file's worth of
                # decoded pages allocated (pyarrow 26) where this holds one group's.
                source = pq.ParquetFile(handle, pre_buffer=False, buffer_size=1 << 20)
                for group in range(source.num_row_groups):
                    yield from source.iter_batches(batch_size=READ_ROWS, row_groups=[group])
            return
        compression = "gzip" if lower.endswith(".gz") else None
        read = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES)
        parse = pacsv.ParseOptions(delimiter="\t" if ".tsv" in lower else ",")
        with fs.open(path, "rb", compression=compression) as handle:
            names = pacsv.open_csv(handle, read_options=read, parse_options=parse).schema.names
        convert = pacsv.ConvertOptions(column_types={n: pa.float64() for n in names if n != target})
        with fs.open(path, "rb", compression=compression) as handle:
            yield from pacsv.open_csv(handle, read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as error:
        if "Empty CSV file" in str(error):
            raise DataError(f"{uri!r} is empty; it needs a header row and at least one data row") from error
        column = re.search(r"column #(\d+)", str(error))
        named = f"the feature column {names[int(column[1])]!r} holds text" if column and names else str(error)
        raise DataError(
            f"{uri!r} could not be read as a table of numeric features: {named} ({error}); "
            "encode text features as numbers (e.g. one-hot) or drop them"
        ) from error
    except OSError as error:
        raise DataError(f"{uri!r} could not be parsed as a table: {error}") from error


def prepare_table(config: TrainerConfig, fs: Any, path: str, uri: str, staging: Path) -> DatasetMetadata:
    data, task = config.data, config.task.type
    target, spec = data.target, data.split
    writers: SplitWriters | None = None
    features: list[str] = []
    stats, target_stats = RunningStats(), RunningStats()
    labels: set[Any] = set()
    numeric_labels = True
    rows = 0
    for batch in record_batches(fs, path, uri, target):
        if writers is None:
            features = check_columns(batch.schema, target, uri)
            label_type = batch.schema.field(target).type
            numeric_labels = pa.types.is_integer(label_type) or pa.types.is_floating(label_type)
            if task == "regression" and not numeric_labels:
                raise DataError(
                    f"the target {target!r} of {uri!r} holds non-numeric values; a regression needs "
                    "numbers — or set task.type: classification"
                )
            schema = pa.schema([(X_COLUMN, pa.list_(pa.float32(), len(features))), (Y_COLUMN, label_type)])
            writers = SplitWriters(staging, schema, group_rows_for(4 * len(features)))
        check_missing(batch, features, target, uri)
        x = np.column_stack(
            [batch.column(name).to_numpy(zero_copy_only=False).astype(np.float32) for name in features]
        )
        check_finite(x, features)
        y = batch.column(target)
        codes = split_codes(np.arange(rows, rows + batch.num_rows), spec.seed, spec.validation, spec.test)
        rows += batch.num_rows
        train = codes == 0
        stats.update(x[train])
        if task == "classification":
            labels.update(check_labels(pc.unique(y).to_pylist(), numeric_labels, len(labels), target))
        else:
            target_stats.update(y.to_numpy(zero_copy_only=False).astype(np.float64)[train, None])
        table = pa.table(
            {X_COLUMN: pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), len(features)), Y_COLUMN: y}
        )
        for code, split in enumerate(SPLITS):
            writers.add(split, table.filter(pa.array(codes == code)))
    if writers is None or rows == 0:
        raise DataError(f"{uri!r} has a header but no data rows")
    writers.close()
    check_sizes(writers.sizes, rows)
    return DatasetMetadata(
        task=task,
        source=data.source,
        feature_shape=[len(features)],
        input_kind="tabular",
        classes=class_names(labels, numeric_labels) if task == "classification" else [],
        feature_names=features,
        sizes=dict(writers.sizes),
        normalization=stats.normalization(data.preprocessing.normalize),
        target_normalization=(
            target_stats.normalization("standard") if task == "regression" else NormalizationStats()
        ),
        storage="parquet",
    )


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


def prepare_image_folder(
    config: TrainerConfig, fs: Any, root: str, uri: str, staging: Path
) -> DatasetMetadata:
    """Rows (path, class). Every image is decoded once, to check it and to collect the train split's
    per-channel statistics, for grayscale and RGB both: the mode is known only at the end."""
    from conveyor.trainer.data.sources import DEFAULT_IMAGE_SIZE, image_files

    data, spec = config.data, config.data.split
    if config.task.type != "classification":
        raise DataError("an image folder is a classification dataset; set task.type: classification")
    size = data.image_size or DEFAULT_IMAGE_SIZE
    classes, files = image_files(fs, root, uri)
    codes = split_codes(np.arange(len(files)), spec.seed, spec.validation, spec.test)
    gray, rgb = RunningStats(), RunningStats()
    all_gray = True
    schema = pa.schema([(PATH_COLUMN, pa.string()), (Y_COLUMN, pa.int64())])
    writers = SplitWriters(staging, schema, group_rows_for(3 * size * size * 4))
    step = 1024
    for begin in range(0, len(files), step):
        chunk, part = files[begin : begin + step], codes[begin : begin + step]
        for (path, _), code in zip(chunk, part, strict=True):
            image = open_image(fs, path)
            all_gray = all_gray and image.mode in GRAY_MODES
            if code == 0:
                gray.update(pixels(image, "L", size).reshape(1, -1).T)
                rgb.update(pixels(image, "RGB", size).reshape(3, -1).T)
        table = pa.table(
            {
                PATH_COLUMN: pa.array([fs.unstrip_protocol(p) for p, _ in chunk], pa.string()),
                Y_COLUMN: pa.array([label for _, label in chunk], pa.int64()),
            }
        )
        for code, split in enumerate(SPLITS):
            writers.add(split, table.filter(pa.array(part == code)))
    writers.close()
    check_sizes(writers.sizes, len(files))
    return DatasetMetadata(
        task="classification",
        source=data.source,
        feature_shape=[1 if all_gray else 3, size, size],
        input_kind="image",
        classes=classes,
        sizes=dict(writers.sizes),
        normalization=(gray if all_gray else rgb).normalization(data.preprocessing.normalize),
        storage="parquet",
    )


def open_image(fs: Any, path: str) -> Any:
    from PIL import Image

    with fs.open(path, "rb") as handle:
        try:
            image = Image.open(io.BytesIO(handle.read()))
            image.load()
        except OSError as error:
            raise DataError(f"{path!r} is not a readable image: {error}") from error
    return image


def pixels(image: Any, mode: str, size: int) -> np.ndarray:
    """[channels, size, size] float32 in [0, 1], as `sources.load_image_folder` makes them."""
    array = np.asarray(image.convert(mode).resize((size, size)), dtype=np.float32) / 255.0
    return array[None] if mode == "L" else array.transpose(2, 0, 1)


# --- reading ------------------------------------------------------------------------------------


class SplitFile:
    """One prepared split: its row groups, and any row range decoded into normalised float32 features
    and encoded labels (int64 classes | float32 targets), as the in-memory splits hold them."""

    def __init__(self, data_dir: Path, split: str, meta: DatasetMetadata) -> None:
        self.path, self.meta = split_file(data_dir, split), meta
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist; run prepare first (or check --data)")
        file = pq.ParquetFile(self.path)
        metadata = file.metadata
        sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.rows = int(self.offsets[-1])
        self.group_rows = max(sizes, default=1)
        self.file: pq.ParquetFile | None = None
        self.cached: tuple[int, pa.Table] | None = None
        stats = meta.normalization
        shape = (1, -1, 1, 1) if meta.input_kind == "image" else (1, -1)
        self.shift = np.asarray(stats.shift, np.float32).reshape(shape) if stats.method != "none" else None
        self.scale = np.asarray(stats.scale, np.float32).reshape(shape) if stats.method != "none" else None
        self.class_values = classes_lookup(meta, file.schema_arrow.field(Y_COLUMN).type)

    def __getstate__(self) -> dict[str, Any]:  # each DataLoader worker opens its own handle
        return {**self.__dict__, "file": None, "cached": None}

    def group(self, index: int) -> pa.Table:
        """Row group `index` (the last one read is kept: validation reads it in slices, in order)."""
        if self.cached is not None and self.cached[0] == index:
            return self.cached[1]
        if self.file is None:
            self.file = pq.ParquetFile(self.path)
        table = self.file.read_row_group(index)
        self.cached = (index, table)
        return table

    def read(self, start: int, stop: int, normalised: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop) as (x float32 [n, *feature_shape], y); x normalised, or as stored (then
        possibly a read-only view of the file's buffers) for a caller that normalises later."""
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last = max(first + 1, int(np.searchsorted(self.offsets, stop, side="left")))
        parts = [self.group(i) for i in range(first, last)]
        table = (pa.concat_tables(parts) if len(parts) > 1 else parts[0]).slice(
            start - int(self.offsets[first]), stop - start
        )
        x = self.features(table)
        return (self.normalise(np.array(x)) if normalised else x), self.labels(table.column(Y_COLUMN))

    def features(self, table: pa.Table) -> np.ndarray:
        if self.meta.input_kind == "image":
            return self.decode_images(table.column(PATH_COLUMN).to_pylist())
        column = table.column(X_COLUMN).combine_chunks()
        return column.flatten().to_numpy().reshape(len(column), *self.meta.feature_shape)

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """`x` (float32, owned) normalised in place with the train split's statistics."""
        if self.shift is not None and self.scale is not None:
            x -= self.shift
            x /= self.scale
        return x

    def decode_images(self, urls: list[str]) -> np.ndarray:
        import fsspec

        channels, size = self.meta.feature_shape[0], self.meta.feature_shape[1]
        out = np.empty((len(urls), channels, size, size), np.float32)
        for i, url in enumerate(urls):
            fs, path = fsspec.core.url_to_fs(url)
            out[i] = pixels(open_image(fs, path), "L" if channels == 1 else "RGB", size)
        return out

    def labels(self, column: pa.ChunkedArray) -> np.ndarray:
        if self.meta.task == "regression":
            return column.to_numpy().astype(np.float32)
        if self.class_values is None:
            return column.to_numpy().astype(np.int64)
        if isinstance(self.class_values, pa.Array):
            return pc.index_in(column, value_set=self.class_values).to_numpy().astype(np.int64)
        return np.searchsorted(self.class_values, column.to_numpy().astype(np.float64)).astype(np.int64)

    def all_labels(self) -> np.ndarray:
        return self.labels(pq.read_table(self.path, columns=[Y_COLUMN]).column(Y_COLUMN))


def classes_lookup(meta: DatasetMetadata, label_type: pa.DataType) -> np.ndarray | pa.Array | None:
    """How raw labels become class indices: None (already 0..k-1: images; regression), the sorted
    values (numeric labels, named by their values) or the names (text labels)."""
    if meta.task != "classification" or meta.input_kind == "image":
        return None
    if pa.types.is_integer(label_type) or pa.types.is_floating(label_type):
        return np.array([float(name) for name in meta.classes])
    return pa.array(meta.classes)


def iter_batches(
    data_dir: Path, split: str, meta: DatasetMetadata, rows: int = 8192
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A split in file order, `rows` at a time: what evaluation streams."""
    source = SplitFile(data_dir, split, meta)
    for start in range(0, source.rows, rows):
        yield source.read(start, min(start + rows, source.rows))


def load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole streamed split in memory, for readers that need one whole (an ensemble's weights)."""
    meta = DatasetMetadata.model_validate_json((data_dir / METADATA_FILE).read_text())
    source = SplitFile(data_dir, split, meta)
    return source.read(0, source.rows)


# --- training -----------------------------------------------------------------------------------


def batch_count(samples: int, batch_size: int) -> int:
    """As `train.batch_count`: a trailing batch of one row is dropped (batch norm cannot train on it)."""
    steps = math.ceil(samples / batch_size)
    return steps - 1 if steps > 1 and samples % batch_size == 1 else steps


def unit_rows(rows: int, group_rows: int, consumers: int) -> int:
    """Rows per unit: a whole row group, halved until every consumer gets MIN_UNITS_PER_CONSUMER."""
    size = max(1, group_rows)
    while size > 1 and rows // size < MIN_UNITS_PER_CONSUMER * consumers:
        size = math.ceil(size / 2)
    return size


class StreamingDataset(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """One rank's batches of the train split as (x, y) CPU tensors; its DataLoader workers split the
    rank's units. Every consumer reads the same number of rows, so `len()` (the batches of one
    epoch on this rank) is the same on every rank."""

    def __init__(
        self, source: SplitFile, batch_size: int, rank: int, world_size: int, workers: int, seed: int
    ) -> None:
        self.source, self.batch_size, self.rank, self.world_size = source, batch_size, rank, world_size
        self.workers, self.seed, self.epoch = max(1, workers), seed, 0
        consumers = world_size * self.workers
        self.unit = unit_rows(source.rows, source.group_rows, consumers)
        self.units = source.rows // self.unit  # a final partial unit (< unit rows) is never read
        self.units_each = self.units // consumers
        if self.units_each == 0:
            raise DataError(
                f"the train split has {source.rows} rows, too few for {world_size} processes; add rows"
            )
        self.samples_per_worker = self.units_each * self.unit
        self.batches_per_worker = batch_count(self.samples_per_worker, batch_size)

    def __len__(self) -> int:
        return self.batches_per_worker * self.workers

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, worker: int) -> list[int]:
        """The units of (this rank, `worker`) this epoch: a permutation seeded by (seed, epoch), sharded."""
        permutation = np.random.default_rng([self.seed, self.epoch]).permutation(self.units)
        return shard([int(u) for u in permutation], self.rank, self.world_size, worker, self.workers)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f"built for {self.workers} DataLoader workers, iterated by {info.num_workers}")
        units = self.order(worker)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        size, left = self.batch_size, self.batches_per_worker
        carry: list[tuple[np.ndarray, np.ndarray]] = []
        for begin in range(0, len(units), MIX_UNITS):
            reads = [
                self.source.read(u * self.unit, (u + 1) * self.unit, normalised=False)
                for u in units[begin : begin + MIX_UNITS]
            ]
            window = carry + reads
            starts = np.cumsum([0, *(len(w[1]) for w in window)])
            order = rng.permutation(int(starts[-1]))
            full = (len(order) // size) * size
            for start in range(0, full, size):
                if left == 0:
                    return
                left -= 1
                x, y = gather(window, starts, order[start : start + size])
                yield torch.from_numpy(self.source.normalise(x)), torch.from_numpy(y)
            carry = [gather(window, starts, order[full:])]
        if left > 0 and carry and len(carry[0][1]):
            yield torch.from_numpy(self.source.normalise(carry[0][0])), torch.from_numpy(carry[0][1])


def gather(
    window: list[tuple[np.ndarray, np.ndarray]], starts: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows `rows` of the window's parts (numbered through, part k from starts[k]) as new arrays:
    each row is copied once, from the file's buffers straight into the batch. The batch holds them
    in row order: a batch is a set, and reading each part in order is cache-friendly."""
    rows = np.sort(rows)
    cuts = np.searchsorted(rows, starts)
    x = np.empty((len(rows), *window[0][0].shape[1:]), np.float32)
    y = np.empty(len(rows), window[0][1].dtype)
    for k, (part_x, part_y) in enumerate(window):
        local = rows[cuts[k] : cuts[k + 1]] - starts[k]
        np.take(part_x, local, axis=0, out=x[cuts[k] : cuts[k + 1]])
        np.take(part_y, local, out=y[cuts[k] : cuts[k + 1]])
    return x, y


def loader_workers(world_size: int) -> int:
    """DataLoader workers per rank, as `train.LoaderBatches` picks them."""
    return min(4, max(1, (os.cpu_count() or 2) // max(1, world_size) - 1))


class StreamingBatches:
    """What the training loop iterates: this rank's streamed batches of the train split, on the device."""

    def __init__(
        self,
        source: SplitFile,
        batch_size: int,
        ctx: distributed.Context,
        seed: int,
        augment: Augment | None,
        workers: int | None = None,
    ) -> None:
        workers = loader_workers(ctx.world_size) if workers is None else workers
        self.dataset = StreamingDataset(source, batch_size, ctx.rank, ctx.world_size, workers, seed)
        # Workers start per epoch (not persistent), so each one sees the epoch it shuffles for. They
        # run PREFETCH_BATCHES ahead (batches are small), so a worker scheduled late on a busy
        # machine does not stall the training step.
        self.loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.dataset.workers,
            pin_memory=ctx.device.type == "cuda",
            prefetch_factor=PREFETCH_BATCHES,
        )
        self.ctx, self.augment = ctx, augment
        self.samples_per_epoch = self.dataset.samples_per_worker * self.dataset.workers
        self.steps = len(self.dataset)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.dataset.set_epoch(epoch)
        for xb, yb in self.loader:
            xb = xb.to(self.ctx.device, non_blocking=True)
            yield (self.augment(xb) if self.augment else xb), yb.to(self.ctx.device, non_blocking=True)


def load_streamed(
    config: TrainerConfig,
    meta: DatasetMetadata,
    data_dir: Path,
    ctx: distributed.Context,
    augment: Augment | None,
) -> tuple[StreamingBatches, Callable[[nn.Module, LossFn, Callable[[], Any]], dict[str, float]]]:
    """`train.load_data` for a streamed dataset: the train batches, and rank 0's validation, which
    reads the validation split in file order and holds only its labels and the model's outputs."""
    seed = config.data.split.seed + config.training.seed
    batches = StreamingBatches(
        SplitFile(data_dir, "train", meta), config.training.batch_size, ctx, seed, augment
    )
    source = SplitFile(data_dir, "validation", meta)
    labels = torch.from_numpy(source.all_labels()).to(ctx.device)
    chunk = max(config.training.batch_size, VALIDATION_ROWS)

    @torch.no_grad()
    def validate(model: nn.Module, loss_fn: LossFn, autocast: Callable[[], Any]) -> dict[str, float]:
        was_training = model.training
        model.eval()
        outputs = []
        with autocast():
            for start in range(0, source.rows, chunk):
                x, _ = source.read(start, min(start + chunk, source.rows))
                outputs.append(model(torch.from_numpy(x).to(ctx.device)).float())
        model.train(was_training)
        return output_metrics(meta, torch.cat(outputs), labels, loss_fn)

    return batches, validate
