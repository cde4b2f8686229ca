"""Putting the user's code on the path (`conveyor.trainer.usercode.activate_code`): a directory given
locally, or the archive `conveyor apply` packs, unpacked once per container into the temp directory."""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path

import pytest

from conveyor.commands.apply import pack
from conveyor.sdk import env as sdk_env
from conveyor.trainer.config import ConfigError
from conveyor.trainer.usercode import activate_code


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """sys.path as it was afterwards; the temp directory (a pod's /tmp emptyDir) under tmp_path."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def project(root: Path, package: str) -> Path:
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("ANSWER = 42\n")
    return root


def test_an_archive_is_unpacked_once_and_put_on_the_path(isolated: Path, tmp_path: Path) -> None:
    package = f"packed_{tmp_path.name}"
    archive = tmp_path / "mounted" / "code.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(pack(project(tmp_path / "src", package)))
    env = {sdk_env.CODE_ARCHIVE: str(archive), "PYTHONPATH": "/already"}
    code = activate_code(env)
    assert code is not None and code.parent == isolated and (code / package / "__init__.py").is_file()
    assert env[sdk_env.CODE] == str(code)
    assert env["PYTHONPATH"] == os.pathsep.join([str(code), "/already"])  # what it starts sees it too
    assert sys.path[0] == str(code) and importlib.import_module(package).ANSWER == 42
    # Another process of the same container finds the copy in place instead of unpacking again.
    (code / "marker").write_text("first")
    again = {sdk_env.CODE_ARCHIVE: str(archive)}
    assert activate_code(again) == code and (code / "marker").read_text() == "first"
    assert [p.name for p in isolated.iterdir()] == [code.name]  # no staging copies left behind


def test_a_changed_archive_gets_its_own_copy(isolated: Path, tmp_path: Path) -> None:
    archive = tmp_path / "code.tar.gz"
    archive.write_bytes(pack(project(tmp_path / "v1", "pkg")))
    first = activate_code({sdk_env.CODE_ARCHIVE: str(archive)})
    (tmp_path / "v1" / "pkg" / "new.py").write_text("")
    archive.write_bytes(pack(tmp_path / "v1"))
    second = activate_code({sdk_env.CODE_ARCHIVE: str(archive)})
    assert first != second and second is not None and (second / "pkg" / "new.py").is_file()


def test_a_broken_archive_names_the_field_and_the_fix(isolated: Path, tmp_path: Path) -> None:
    archive = tmp_path / "code.tar.gz"
    archive.write_bytes(b"not a tar.gz")
    with pytest.raises(ConfigError, match=r"spec.code.configMap: .*re-run `conveyor apply -f`"):
        activate_code({sdk_env.CODE_ARCHIVE: str(archive)})


def test_a_code_directory_is_put_on_the_path_once(isolated: Path, tmp_path: Path) -> None:
    env = {sdk_env.CODE: str(tmp_path), "PYTHONPATH": str(tmp_path)}
    assert activate_code(env) == tmp_path
    assert activate_code(env) == tmp_path
    assert env["PYTHONPATH"] == str(tmp_path) and sys.path.count(str(tmp_path)) == 1


def test_no_code_changes_nothing(isolated: Path) -> None:
    env = {"PYTHONPATH": "/x"}
    before = list(sys.path)
    assert activate_code(env) is None
    assert env == {"PYTHONPATH": "/x"} and sys.path == before
