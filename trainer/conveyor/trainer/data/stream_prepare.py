"""The one pass that prepares a source larger than memory: `<split>.parquet` files and the metadata.

`prepare_streaming` reads the source with pyarrow (Parquet record batches, `pyarrow.csv.open_csv`
blocks, or the files of an image folder), assigns each row to a split (`stream_plan.split_codes`),
collects the classes and the train split's normalisation statistics on the way (`RunningStats`), checks
each block (`stream_checks`) and appends its rows to the split files. The statistics exist only once
the pass ends, so the files hold rows as read — the features as one `x` column of float32 lists
(tables) or the image's `path` (folders), and the raw label `y` — and readers (`stream_read`) normalise
and encode a batch at a time. Row groups hold at most `ROW_GROUP_BYTES` of features, so no reader
decodes much at once. The pass itself holds one block of the source: a CSV block, or a slice of one
Parquet row group (pyarrow decodes a row group's columns whole), so its memory follows the source's
row-group size, never its length.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from conveyor.trainer.artifacts import SPLITS, DatasetMetadata, NormalizationStats
from conveyor.trainer.data import DataError
from conveyor.trainer.data.sources import open_image
from conveyor.trainer.data.stream_checks import (
    check_columns,
    check_finite,
    check_labels,
    check_missing,
    check_sizes,
    class_names,
)
from conveyor.trainer.data.stream_plan import (
    PATH_COLUMN,
    X_COLUMN,
    Y_COLUMN,
    group_rows_for,
    split_codes,
    split_file,
)
from conveyor.trainer.data.stream_read import pixels

if TYPE_CHECKING:
    from conveyor.trainer.config import TrainerConfig

READ_ROWS = 16384  # rows per block read from a Parquet source: its temporaries stay a few MiB
CSV_BLOCK_BYTES = 8 << 20
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


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
