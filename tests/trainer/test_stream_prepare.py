"""stream_prepare (with stream_checks and stream_read): the one-pass prepare of sources larger than
memory — streamed and in-memory splits agree, the split is seeded and written once, row groups stay
bounded, labels are encoded as in memory, image folders hold paths, bad data is named — read back
through `load_split` (stream_read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conveyor.trainer.data import DataError, stream_plan
from conveyor.trainer.data.prepare import is_complete, load_split, normalization_stats, prepare
from conveyor.trainer.data.stream_plan import split_file
from tests.trainer.training_helpers import config

STREAM = "CONVEYOR_IN_MEMORY_BYTES"


def table(rows: int, seed: int = 0) -> pd.DataFrame:
    """Five features on very different scales; three text classes that the features separate."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 5)) * [1, 10, 100, 0.1, 5] + [0, 3, -50, 1, 2]
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(5)])
    frame["label"] = np.where(x[:, 0] > 0.3, "cat", np.where(x[:, 1] > 3, "dog", "emu"))
    return frame


def raw_rows(data_dir: Path, split: str) -> np.ndarray:
    """A streamed split's features as read from the source (before normalisation)."""
    column = pq.read_table(split_file(data_dir, split), columns=["x"]).column("x").combine_chunks()
    return column.flatten().to_numpy().reshape(len(column), -1).astype(np.float32)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_streamed_and_in_memory_prepare_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    frame = table(3000)
    source = tmp_path / f"t.{suffix}"
    frame.to_csv(source, index=False) if suffix == "csv" else frame.to_parquet(source)
    cfg = config(data={"source": str(source)})
    memory = prepare(cfg, tmp_path / "memory")
    monkeypatch.setenv(STREAM, "0")
    streamed = prepare(cfg, tmp_path / "streamed")
    assert (memory.storage, streamed.storage) == ("npz", "parquet")
    assert is_complete(tmp_path / "streamed")
    assert streamed.classes == memory.classes == ["cat", "dog", "emu"]
    assert streamed.feature_names == memory.feature_names and streamed.feature_shape == [5]
    assert sum(streamed.sizes.values()) == 3000
    for split, share in (("train", 0.7), ("validation", 0.15), ("test", 0.15)):  # approximate fractions
        assert abs(streamed.sizes[split] / 3000 - share) < 0.03, streamed.sizes
    # One-pass statistics are those of the whole streamed train split, and close to the in-memory
    # split's (a different random 70% of the same rows).
    exact = normalization_stats(raw_rows(tmp_path / "streamed", "train"), "standard", "tabular")
    np.testing.assert_allclose(streamed.normalization.shift, exact.shift, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(streamed.normalization.scale, exact.scale, rtol=1e-9)
    np.testing.assert_allclose(streamed.normalization.scale, memory.normalization.scale, rtol=0.05)
    x, y = load_split(tmp_path / "streamed", "train")
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (streamed.sizes["train"], 5)
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=0), 1, atol=1e-3)
    raw = raw_rows(tmp_path / "streamed", "train")  # labels encoded in the order of `classes`
    np.testing.assert_array_equal(y, np.where(raw[:, 0] > 0.3, 0, np.where(raw[:, 1] > 3, 1, 2)))


def test_streamed_split_is_seeded_and_written_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table(2000).to_parquet(tmp_path / "t.parquet")
    monkeypatch.setenv(STREAM, "0")
    sections = {"source": str(tmp_path / "t.parquet"), "split": {"seed": 3}}
    a = prepare(config(data=sections), tmp_path / "a")
    b = prepare(config(data=sections), tmp_path / "b")
    prepare(config(data={**sections, "split": {"seed": 4}}), tmp_path / "c")
    np.testing.assert_array_equal(raw_rows(tmp_path / "a", "test"), raw_rows(tmp_path / "b", "test"))
    assert a.sizes == b.sizes and not np.array_equal(
        raw_rows(tmp_path / "a", "test")[:5], raw_rows(tmp_path / "c", "test")[:5]
    )
    rows = np.concatenate([raw_rows(tmp_path / "a", s) for s in ("train", "validation", "test")])
    assert len({tuple(r) for r in rows.round(4)}) == 2000  # disjoint, nothing lost
    stamp = split_file(tmp_path / "a", "train").stat().st_mtime_ns
    prepare(config(data={**sections, "split": {"seed": 9}}), tmp_path / "a")
    assert split_file(tmp_path / "a", "train").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_row_groups_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_plan, "ROW_GROUP_BYTES", 5 * 4 * 100)  # 100 rows of five float32
    table(3000).to_parquet(tmp_path / "t.parquet")
    monkeypatch.setenv(STREAM, "0")
    meta = prepare(config(data={"source": str(tmp_path / "t.parquet")}), tmp_path / "data")
    metadata = pq.ParquetFile(split_file(tmp_path / "data", "train")).metadata
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert max(sizes) == 100 and sum(sizes) == meta.sizes["train"] and all(s == 100 for s in sizes[:-1])


def test_numeric_labels_and_regression(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = table(1500)
    frame["label"] = np.where(frame["f0"] > 0, 10, 2)  # names "2", "10": numeric order, not text order
    frame.to_csv(tmp_path / "c.csv", index=False)
    frame["target"] = frame["f0"] * 3 + 1
    frame.drop(columns=["label"]).to_parquet(tmp_path / "r.parquet")
    monkeypatch.setenv(STREAM, "0")
    meta = prepare(config(data={"source": str(tmp_path / "c.csv")}), tmp_path / "c")
    assert meta.classes == ["2", "10"]
    _, y = load_split(tmp_path / "c", "train")
    raw = raw_rows(tmp_path / "c", "train")
    np.testing.assert_array_equal(y, (raw[:, 0] > 0).astype(np.int64))
    frame["label"] = frame["label"].astype(str)  # text that looks numeric: text order, as in memory
    frame.drop(columns=["target"]).to_parquet(tmp_path / "s.parquet")
    meta = prepare(config(data={"source": str(tmp_path / "s.parquet")}), tmp_path / "s")
    assert meta.classes == ["10", "2"]
    _, y = load_split(tmp_path / "s", "train")
    np.testing.assert_array_equal(y, (raw_rows(tmp_path / "s", "train")[:, 0] <= 0).astype(np.int64))
    meta = prepare(
        config(task={"type": "regression"}, data={"source": str(tmp_path / "r.parquet"), "target": "target"}),
        tmp_path / "r",
    )
    _, target = load_split(tmp_path / "r", "train")
    assert target.dtype == np.float32 and meta.classes == []
    assert meta.target_normalization.shift[0] == pytest.approx(
        float(target.astype(np.float64).mean()), rel=1e-5
    )
    assert meta.target_normalization.scale[0] == pytest.approx(
        float(target.astype(np.float64).std()), rel=1e-5
    )


def images(root: Path, count: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for name, value in (("cats", 40), ("dogs", 200)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(value + rng.normal(0, 10, (10, 12)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_image_folder_streams_paths_and_decodes_lazily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = images(tmp_path / "images")
    cfg = config(data={"source": str(source), "imageSize": 8, "split": {"stratify": False}})
    memory = prepare(cfg, tmp_path / "memory")
    monkeypatch.setenv(STREAM, "0")
    meta = prepare(cfg, tmp_path / "streamed")
    assert meta.storage == "parquet" and meta.feature_shape == memory.feature_shape == [1, 8, 8]
    assert meta.classes == memory.classes == ["cats", "dogs"] and sum(meta.sizes.values()) == 24
    rows = pq.read_table(split_file(tmp_path / "streamed", "train")).to_pylist()
    assert all(Path(r["path"].removeprefix("file://")).is_file() for r in rows)  # paths, not pixels
    x, y = load_split(tmp_path / "streamed", "train")
    assert x.shape == (meta.sizes["train"], 1, 8, 8) and set(y) == {0, 1}
    np.testing.assert_allclose(x.mean(), 0, atol=1e-4)  # normalised with its own train statistics
    np.testing.assert_allclose(x.std(), 1, atol=1e-3)


BAD = [
    ("x1,x2,y\n1,2,0\n", {"target": "label"}, ["'label'", "x1, x2, y", "data.target"]),
    ("height,colour,label\n" + "".join(f"{i},red,{i % 2}\n" for i in range(20)), {}, ["colour", "one-hot"]),
    ("a,b,label\n" + "".join(f"{i},{'' if i < 3 else i},{i % 2}\n" for i in range(20)), {}, ["'b': 3 rows"]),
    ("a,label\n" + "".join(f"{i},{i * 0.37}\n" for i in range(20)), {}, ["task.type: regression"]),
    ("a,label\n" + "".join(f"{i},1\n" for i in range(20)), {}, ["single class"]),
    ("a,label\n1,0\n2,1\n", {}, ["split empty", "add rows"]),
]


@pytest.mark.parametrize(("text", "data", "phrases"), BAD)
def test_bad_data_is_named_on_the_streaming_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, data: dict[str, str], phrases: list[str]
) -> None:
    (tmp_path / "a.csv").write_text(text)
    monkeypatch.setenv(STREAM, "0")
    with pytest.raises(DataError) as error:
        prepare(config(data={"source": str(tmp_path / "a.csv"), **data}), tmp_path / "out")
    for phrase in phrases:
        assert phrase in str(error.value)
    assert not is_complete(tmp_path / "out") and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_threshold_must_be_a_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table(100).to_csv(tmp_path / "t.csv", index=False)
    monkeypatch.setenv(STREAM, "2GB")
    with pytest.raises(DataError, match=r"CONVEYOR_IN_MEMORY_BYTES='2GB'.*integer"):
        prepare(config(data={"source": str(tmp_path / "t.csv")}), tmp_path / "out")
