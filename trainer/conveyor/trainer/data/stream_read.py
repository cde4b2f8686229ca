"""Reading prepared Parquet splits: any row range of a split decoded into normalised float32 features
and encoded labels, as the in-memory splits hold them, a row group at a time.

`SplitFile` is what training (`streaming`), validation and evaluation (`iter_batches`) read through;
the train split's statistics in `metadata.json` normalise each batch as it is read, because the files
hold rows as the one pass saw them (`stream_prepare`). Image folders hold paths: images are decoded
here, batch by batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from conveyor.trainer.artifacts import METADATA_FILE, DatasetMetadata
from conveyor.trainer.data.sources import open_image
from conveyor.trainer.data.stream_plan import PATH_COLUMN, X_COLUMN, Y_COLUMN, split_file


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


def pixels(image: Any, mode: str, size: int) -> np.ndarray:
    """[channels, size, size] float32 in [0, 1], as `sources.load_image_folder` makes them."""
    array = np.asarray(image.convert(mode).resize((size, size)), dtype=np.float32) / 255.0
    return array[None] if mode == "L" else array.transpose(2, 0, 1)
