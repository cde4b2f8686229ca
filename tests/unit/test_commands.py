"""`conveyor validate` and `conveyor crd` as a user runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

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
