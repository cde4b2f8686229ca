"""`conveyor validate`, `conveyor crd`, and the user-code paths of `run` and `apply`, as a user runs them."""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from conveyor.cli import main
from conveyor.operator.api.crd import CRD_PATH
from tests.helpers.manifests import EXAMPLES, REPO


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(p) for p in sorted(EXAMPLES.glob("*.yaml"))]
    assert main(["validate", "-f", paths[0], *paths[1:]]) == 0
    out = capsys.readouterr().out
    assert out.count(": OK (") == len(paths)


def test_validate_reports_field_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    text = (EXAMPLES / "digits.yaml").read_text().replace("parallelism: 3", "parallelism: 30")
    bad.write_text(text.replace("pruner: asha", "pruner: sha"))
    assert main(["validate", "-f", str(bad), "-f", str(tmp_path / "missing.yaml")]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: spec.tuning.pruner: Input should be 'none', 'median', 'asha' or 'hyperband'" in err
    assert "missing.yaml: no such file" in err


def test_crd_prints_the_committed_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == (REPO / CRD_PATH).read_text()


# --- user code: validate, run, apply --------------------------------------------------------------

MODEL_CODE = """
import math

from torch import nn


def build(options, info):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(info.input_shape), info.num_outputs))


def ten_outputs_always(options, info):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(info.input_shape), 3))
"""


def user_project(tmp_path: Path, entrypoint: str = "build", code_path: str = "src") -> Path:
    """A user's project: code under src/<package>/ and a manifest next to it naming it; the package is
    named after the test's directory, so each test imports its own."""
    package = f"userpkg_{tmp_path.name}"
    (tmp_path / "src" / package).mkdir(parents=True)
    (tmp_path / "src" / package / "__init__.py").write_text("")
    (tmp_path / "src" / package / "models.py").write_text(MODEL_CODE)
    (tmp_path / "src" / package / "__pycache__").mkdir()
    (tmp_path / "src" / package / "__pycache__" / "models.cpython-311.pyc").write_bytes(b"\0" * 64)
    manifest = {
        "apiVersion": "conveyor.dev/v1alpha1",
        "kind": "TrainingPipeline",
        "metadata": {"name": "mine"},
        "spec": {
            "data": {"source": "builtin://digits"},
            "model": {"entrypoint": f"{package}.models:{entrypoint}"},
            "training": {"epochs": 1},
            "code": {"path": code_path},
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """sys.path and the code environment as they were, whatever validate and run put there."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("CONVEYOR_CODE", raising=False)


def test_validate_imports_the_code_relative_to_the_manifest(
    tmp_path: Path, isolated: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = user_project(tmp_path)
    monkeypatch.chdir(REPO)  # the code path is the manifest's, not the working directory's
    assert main(["validate", "-f", str(manifest)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == f"{manifest}: OK (mine)\n"


def test_validate_names_a_typo_in_an_entrypoint(
    tmp_path: Path, isolated: None, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = user_project(tmp_path, entrypoint="biuld")
    assert main(["validate", "-f", str(manifest)]) == 1
    err = capsys.readouterr().err
    assert "spec.model.entrypoint: module" in err and "did you mean" in err and ".models:build?" in err


def test_validate_runs_the_preflight_checks(
    tmp_path: Path, isolated: None, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    manifest = user_project(tmp_path, entrypoint="ten_outputs_always")
    assert main(["validate", "-f", str(manifest)]) == 1
    err = capsys.readouterr().err
    assert "model.entrypoint" in err and "OK" not in err


def test_validate_refuses_a_code_path_that_is_no_directory(
    tmp_path: Path, isolated: None, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = user_project(tmp_path, code_path="nowhere")
    assert main(["validate", "-f", str(manifest)]) == 1
    assert f"spec.code.path: {tmp_path / 'nowhere'} is not a directory" in capsys.readouterr().err


def test_run_refuses_unusable_code_before_starting_anything(
    tmp_path: Path, isolated: None, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = user_project(tmp_path, entrypoint="biuld")
    root = tmp_path / "runs"
    assert main(["run", "-f", str(manifest), "--root", str(root), "--plain", "--no-serve"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert not root.exists()


def test_apply_packs_the_code_deterministically(tmp_path: Path) -> None:
    from conveyor.commands.apply import pack, with_packed_code

    manifest = user_project(tmp_path)
    document = yaml.safe_load(manifest.read_text())
    applied, archive = with_packed_code(document, tmp_path)
    assert applied["spec"]["code"] == {"configMap": "mine-code"}
    assert document["spec"]["code"] == {"path": "src"}  # the manifest itself is left alone
    assert archive is not None and archive == pack(tmp_path / "src")  # same directory, same bytes
    with tarfile.open(fileobj=io.BytesIO(archive)) as packed:
        names = packed.getnames()
        assert all(m.mtime == 0 and m.uid == 0 for m in packed.getmembers())
    package = f"userpkg_{tmp_path.name}"
    assert sorted(names) == [f"{package}/__init__.py", f"{package}/models.py"]  # no __pycache__


def test_apply_refuses_code_larger_than_a_config_map(tmp_path: Path) -> None:
    from conveyor.commands.apply import ApplyError, pack

    (tmp_path / "weights.bin").write_bytes(os.urandom(1_200_000))
    with pytest.raises(ApplyError, match=r"spec.code.path: .* MiB, more than a ConfigMap.*spec.code.image"):
        pack(tmp_path)


def test_apply_leaves_a_manifest_without_code_path_alone() -> None:
    from conveyor.commands.apply import with_packed_code

    document = yaml.safe_load((EXAMPLES / "digits.yaml").read_text())
    assert with_packed_code(document, EXAMPLES) == (document, None)
