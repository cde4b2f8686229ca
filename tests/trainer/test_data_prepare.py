"""prepare and sources: real scikit-learn data, real files; every bad-data error names problem and fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conveyor.trainer.artifacts import read_metadata
from conveyor.trainer.data import DataError
from conveyor.trainer.data.prepare import is_complete, load_split, map_npz, prepare
from conveyor.trainer.data.sources import in_memory_size, load_builtin, resolve_uri
from tests.trainer.training_helpers import cli, config, prepared


def splits(data_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {s: load_split(data_dir, s) for s in ("train", "validation", "test")}


@pytest.mark.parametrize(
    ("name", "task", "shape", "classes"),
    [
        ("digits", "classification", [1, 8, 8], 10),
        ("iris", "classification", [4], 3),
        ("wine", "classification", [13], 3),
        ("breast-cancer", "classification", [30], 2),
        ("diabetes", "regression", [10], 0),
    ],
)
def test_builtin_sets(tmp_path: Path, name: str, task: str, shape: list[int], classes: int) -> None:
    data_dir = prepared(tmp_path, task={"type": task}, data={"source": f"builtin://{name}"})
    meta = read_metadata(data_dir)
    assert meta.feature_shape == shape
    assert meta.num_classes == classes
    arrays = splits(data_dir)
    assert sum(meta.sizes.values()) == sum(len(y) for _, y in arrays.values())
    for x, y in arrays.values():
        assert x.dtype == np.float32 and list(x.shape[1:]) == shape
        assert y.dtype == (np.int64 if task == "classification" else np.float32)
    if task == "regression":
        train_y = arrays["train"][1]
        assert meta.target_normalization.shift[0] == pytest.approx(train_y.mean(), rel=1e-5)


def test_split_is_seeded_stratified_and_disjoint(tmp_path: Path) -> None:
    sections = {"data": {"source": "builtin://iris", "split": {"seed": 7, "validation": 0.2, "test": 0.2}}}
    first, second = prepared(tmp_path / "a", **sections), prepared(tmp_path / "b", **sections)
    for s in ("train", "validation", "test"):
        np.testing.assert_array_equal(load_split(first, s)[0], load_split(second, s)[0])
    other = prepared(tmp_path / "c", data={**sections["data"], "split": {"seed": 8}})
    assert not np.array_equal(load_split(first, "test")[0], load_split(other, "test")[0])
    # Stratified: iris has 50 of each class, so every split holds each class equally (+-1).
    for s in ("train", "validation", "test"):
        counts = np.bincount(load_split(first, s)[1], minlength=3)
        assert counts.max() - counts.min() <= 1, (s, counts)
    rows = [tuple(r) for s in ("train", "validation", "test") for r in load_split(first, s)[0].round(5)]
    assert len(rows) == 150


def test_normalisation_comes_from_the_train_split_only(tmp_path: Path) -> None:
    data_dir = prepared(tmp_path, data={"source": "builtin://wine"})
    meta = read_metadata(data_dir)
    train_x = load_split(data_dir, "train")[0]
    np.testing.assert_allclose(train_x.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(train_x.std(axis=0), 1, atol=1e-3)
    assert np.abs(load_split(data_dir, "test")[0].mean(axis=0)).max() > 1e-3  # not refitted on test
    assert meta.normalization.method == "standard" and len(meta.normalization.shift) == 13


def test_minmax_and_per_channel_image_stats(tmp_path: Path) -> None:
    data_dir = prepared(
        tmp_path, data={"source": "builtin://digits", "preprocessing": {"normalize": "minmax"}}
    )
    meta = read_metadata(data_dir)
    assert meta.input_kind == "image" and len(meta.normalization.shift) == 1  # one channel
    train_x = load_split(data_dir, "train")[0]
    assert train_x.min() == pytest.approx(0.0) and train_x.max() == pytest.approx(1.0)


def test_a_prepared_split_is_mapped_copy_on_write(tmp_path: Path) -> None:
    data_dir = prepared(tmp_path, data={"source": "builtin://digits"})
    path = data_dir / "train.npz"
    before = path.read_bytes()
    x, y = load_split(data_dir, "train")
    assert isinstance(x.base, np.memmap) and type(x) is np.ndarray  # the file's pages, a plain array
    with np.load(path) as arrays:
        for name, mapped in (("x", x), ("y", y)):
            whole = arrays[name]
            assert mapped.dtype == whole.dtype and mapped.shape == whole.shape
            assert np.array_equal(mapped, whole)
    # Writable, but a write stays in this process's copy: the file and the next reader see the split.
    x[0] = 42.0
    assert path.read_bytes() == before and not np.any(load_split(data_dir, "train")[0][0] == 42.0)


def test_arrays_that_cannot_be_mapped_are_read(tmp_path: Path) -> None:
    x, y = np.arange(12, dtype=np.float32).reshape(3, 4), np.array([0, 1, 0])
    np.savez_compressed(tmp_path / "train.npz", x=x, y=y)
    assert map_npz(tmp_path / "train.npz") is None
    np.savez(tmp_path / "validation.npz", x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64))
    assert map_npz(tmp_path / "validation.npz") is None
    np.savez(tmp_path / "test.npz", x=np.asfortranarray(x), y=y)
    for split, expected in (("train", x), ("validation", np.zeros((0, 4))), ("test", x)):
        loaded, _ = load_split(tmp_path, split)
        assert np.array_equal(loaded, expected), split


def test_prepare_is_written_once(tmp_path: Path) -> None:
    data_dir = prepared(tmp_path, data={"source": "builtin://iris"})
    stamp = (data_dir / "train.npz").stat().st_mtime_ns
    # A second prepare (even with another seed) keeps the existing split: every stage sees the same one.
    prepare(config(data={"source": "builtin://iris", "split": {"seed": 1}}), data_dir)
    assert (data_dir / "train.npz").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_string_labels_csv_parquet_and_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    frame["species"] = np.where(frame["a"] > 0, "setosa", "virginica")
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    for source in (str(tmp_path / "t.csv"), f"file://{tmp_path}/t.parquet"):
        out = tmp_path / source.rsplit(".", 1)[1]
        meta = prepare(config(data={"source": source, "target": "species"}), out)
        assert meta.classes == ["setosa", "virginica"] and meta.feature_names == ["a", "b"]
        _, y = load_split(out, "train")
        assert set(np.unique(y)) == {0, 1}
    monkeypatch.setenv("CONVEYOR_PVC_ROOT", str(tmp_path / "mnt"))
    assert resolve_uri("pvc://claim/sets/t.csv") == str(tmp_path / "mnt" / "claim" / "sets" / "t.csv")
    (tmp_path / "mnt" / "claim").mkdir(parents=True)
    (tmp_path / "t.csv").rename(tmp_path / "mnt" / "claim" / "t.csv")
    meta = prepare(config(data={"source": "pvc://claim/t.csv", "target": "species"}), tmp_path / "pvc")
    assert meta.sizes["train"] > 0


def test_image_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, value in (("cats", 40), ("dogs", 200)):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(6):
            pixels = np.clip(value + rng.normal(0, 10, (10, 12)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    meta = prepare(
        config(data={"source": str(tmp_path / "images"), "imageSize": 8, "split": {"stratify": False}}),
        tmp_path / "data",
    )
    assert meta.input_kind == "image" and meta.feature_shape == [1, 8, 8] and meta.classes == ["cats", "dogs"]
    assert sum(meta.sizes.values()) == 12


def test_in_memory_size_decides_which_sources_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parquet by its footer (rows x columns x 4), CSV by its file size, folders by images x 3 x side^2
    x 4; a source over CONVEYOR_IN_MEMORY_BYTES streams (conveyor.trainer.data.streaming), one under
    it keeps the exact in-memory path and its .npz files."""
    frame = pd.DataFrame({"a": np.arange(40.0), "b": np.arange(40.0), "label": np.arange(40) % 2})
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_csv(tmp_path / "t.csv", index=False)
    assert in_memory_size(config(data={"source": str(tmp_path / "t.parquet")}).data) == 40 * 3 * 4
    assert (
        in_memory_size(config(data={"source": str(tmp_path / "t.csv")}).data)
        == (tmp_path / "t.csv").stat().st_size
    )
    assert in_memory_size(config().data) is None  # builtin sets always load
    (tmp_path / "images" / "a").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "images" / "a" / f"{i}.png")
    assert (
        in_memory_size(config(data={"source": str(tmp_path / "images"), "imageSize": 8}).data)
        == 3 * 3 * 8 * 8 * 4
    )
    monkeypatch.setenv("CONVEYOR_IN_MEMORY_BYTES", str(40 * 3 * 4))  # not over: in memory
    assert prepare(config(data={"source": str(tmp_path / "t.parquet")}), tmp_path / "memory").storage == "npz"
    assert (tmp_path / "memory" / "train.npz").is_file() and not (
        tmp_path / "memory" / "train.parquet"
    ).exists()
    monkeypatch.setenv("CONVEYOR_IN_MEMORY_BYTES", str(40 * 3 * 4 - 1))
    assert (
        prepare(config(data={"source": str(tmp_path / "t.parquet")}), tmp_path / "streamed").storage
        == "parquet"
    )
    assert is_complete(tmp_path / "streamed") and not (tmp_path / "streamed" / "train.npz").exists()


def test_synthetic_kinds_are_deterministic(tmp_path: Path) -> None:
    for kind, task, shape in (
        ("classification", "classification", [5]),
        ("regression", "regression", [5]),
        ("image", "classification", [1, 6, 6]),
    ):
        sections = {
            "task": {"type": task},
            "data": {
                "source": "builtin://synthetic",
                "synthetic": {"kind": kind, "samples": 100, "features": 5, "imageSize": 6},
            },
        }
        a, b = prepared(tmp_path / kind / "a", **sections), prepared(tmp_path / kind / "b", **sections)
        assert read_metadata(a).feature_shape == shape
        np.testing.assert_array_equal(load_split(a, "train")[0], load_split(b, "train")[0])


# --- bad data ---------------------------------------------------------------------------------


def write_csv(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def bad(tmp_path: Path, source: str, **data: object) -> str:
    with pytest.raises(DataError) as error:
        prepare(config(data={"source": source, **data}), tmp_path / "out")
    assert not is_complete(tmp_path / "out")
    return str(error.value)


def test_missing_target_lists_the_columns(tmp_path: Path) -> None:
    message = bad(tmp_path, write_csv(tmp_path / "a.csv", "x1,x2,y\n1,2,0\n"), target="label")
    assert "'label'" in message and "x1, x2, y" in message and "data.target" in message


def test_non_numeric_features_are_named(tmp_path: Path) -> None:
    text = "height,colour,city,label\n" + "".join(f"{i},red,paris,{i % 2}\n" for i in range(20))
    message = bad(tmp_path, write_csv(tmp_path / "a.csv", text))
    assert "'colour'" in message and "'city'" in message and "'height'" not in message
    assert "one-hot" in message


@pytest.mark.parametrize("text", ["", "\n\n", "a,b,label\n"])
def test_empty_files(tmp_path: Path, text: str) -> None:
    message = bad(tmp_path, write_csv(tmp_path / "a.csv", text))
    assert "empty" in message or "no data rows" in message


def test_nans_name_columns_and_counts(tmp_path: Path) -> None:
    text = "a,b,label\n" + "".join(f"{i},{'' if i < 3 else i},{i % 2}\n" for i in range(20))
    message = bad(tmp_path, write_csv(tmp_path / "a.csv", text))
    assert "'b': 3 rows" in message and "'a'" not in message


def test_a_class_too_small_to_stratify_is_named(tmp_path: Path) -> None:
    text = "a,label\n" + "".join(f"{i},{'rare' if i == 0 else i % 2}\n" for i in range(40))
    message = bad(tmp_path, write_csv(tmp_path / "a.csv", text))
    assert "'rare' has 1 row" in message and "stratify: false" in message


def test_unknown_builtin_and_wrong_task(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown builtin dataset .mnist.*builtin://digits"):
        load_builtin("mnist", config().data, "classification")
    message = bad(tmp_path, "builtin://diabetes")
    assert "regression" in message and "task.type" in message


def test_fractional_classification_target_and_missing_file(tmp_path: Path) -> None:
    text = "a,label\n" + "".join(f"{i},{i * 0.37}\n" for i in range(20))
    assert "task.type: regression" in bad(tmp_path, write_csv(tmp_path / "a.csv", text))
    assert "does not exist" in bad(tmp_path, str(tmp_path / "nope.csv"))


def test_cli_reports_bad_data_in_one_line_with_status_2(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "a.csv", "x1,x2\n1,2\n")
    done = cli("prepare", "--config", json.dumps({"data": {"source": source}}), "--out", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "available columns: x1, x2" in done.stderr
    done = cli("prepare", "--config", '{"data": {"source": "builtin://mnist"}}', "--out", tmp_path / "out")
    assert done.returncode == 2 and "data" in done.stderr and "builtin://digits" in done.stderr


def test_cli_prepare_leaves_a_result_and_a_termination_message(tmp_path: Path) -> None:
    """On Kubernetes a Job that completes without a termination message is a failed workload."""
    import os
    import subprocess
    import sys

    from tests.trainer.training_helpers import REPO, child_env

    term = tmp_path / "termination-log"
    term.write_text("")
    argv = [sys.executable, "-m", "conveyor.trainer", "prepare", "--out", str(tmp_path / "data")]
    argv += ["--config", '{"data": {"source": "builtin://iris"}}']
    env = {**child_env(), "CONVEYOR_TERMINATION_LOG": str(term), "CONVEYOR_ATTEMPT": "2"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    message = json.loads(term.read_text())
    assert message["status"] == "succeeded" and message["attempt"] == 2
    assert message["sizes"] == {"train": 104, "validation": 23, "test": 23}
    assert json.loads((tmp_path / "data" / "result.json").read_text()) == message
    assert os.access(tmp_path / "data" / "train.npz", os.R_OK)


def test_csv_over_http(tmp_path: Path) -> None:
    """http(s):// sources go through fsspec's HTTP filesystem (here a server on loopback)."""
    import functools
    import http.server
    import threading

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=40), "y": rng.normal(size=40)})
    frame["label"] = (frame["x"] > 0).astype(int)
    served = tmp_path / "www"
    served.mkdir()
    frame.to_csv(served / "set.csv", index=False)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/set.csv"
        meta = prepare(config(data={"source": url}), tmp_path / "data")
        assert meta.feature_names == ["x", "y"] and meta.classes == ["0", "1"]
        assert sum(meta.sizes.values()) == 40
        with pytest.raises(DataError, match=r"missing\.csv"):
            prepare(config(data={"source": url.replace("set", "missing")}), tmp_path / "none")
    finally:
        server.shutdown()


@pytest.mark.parametrize("source", ["pvc://", "pvc:///sets/t.csv", "pvc://Sets/t.csv", "pvc://-x/t.csv"])
def test_a_pvc_source_must_name_a_claim(source: str) -> None:
    from conveyor.trainer.config import DataSpec

    with pytest.raises(ValueError, match="names no valid claim"):
        DataSpec(source=source)
    assert DataSpec(source="pvc://sets.v2/t.csv").source == "pvc://sets.v2/t.csv"
