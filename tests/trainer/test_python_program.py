"""A user's `python script` / `python -m module` run through `python_program`: what the program sees
and how it exits are python's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.trainer.python_program import wrapped
from tests.trainer.training_helpers import REPO, child_env

PROGRAM = """
import json, sys
import helper  # next to the script, as `python script.py` finds it
print(json.dumps({"name": __name__, "argv": sys.argv[1:], "helper": helper.VALUE}))
if sys.argv[1:] == ["fail"]:
    raise RuntimeError("boom")
sys.exit(int(sys.argv[1]) if sys.argv[1:] and sys.argv[1].isdigit() else None)
"""


def test_only_a_plain_script_or_module_is_wrapped() -> None:
    runner = [sys.executable, "-m", "conveyor.trainer.python_program"]
    assert wrapped(["python", "train.py", "--lr", "1"]) == [*runner, "train.py", "--lr", "1"]
    assert wrapped(["python3", "-m", "pkg.train", "x"]) == [*runner, "-m", "pkg.train", "x"]
    for argv in (["python", "-u", "train.py"], ["python", "-c", "pass"], ["python", "-m"], ["./run.sh"]):
        assert wrapped(argv) is None, argv
    assert wrapped(["/opt/other/python", "train.py"]) is None  # a named interpreter stays the user's


@pytest.mark.parametrize(("args", "status"), [([], 0), (["3"], 3), (["fail"], 1)])
def test_a_script_sees_what_python_gives_it_and_exits_with_its_status(
    tmp_path: Path, args: list[str], status: int
) -> None:
    code = tmp_path / "project"
    code.mkdir()
    (code / "train.py").write_text(PROGRAM)
    (code / "helper.py").write_text("VALUE = 7\n")
    command = wrapped(["python", str(code / "train.py"), *args]) or []
    ran = subprocess.run(command, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ran.returncode == status, ran.stderr
    assert json.loads(ran.stdout.splitlines()[0]) == {"name": "__main__", "argv": args, "helper": 7}
    assert ("RuntimeError: boom" in ran.stderr) == (status == 1)


def test_a_module_runs_as_main_with_its_arguments(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text("VALUE = 7\n")
    (package / "train.py").write_text(PROGRAM.replace("import helper", "from pkg import helper"))
    command = wrapped(["python", "-m", "pkg.train", "--lr", "0.1"]) or []
    ran = subprocess.run(
        command,
        env=child_env(PYTHONPATH=str(tmp_path)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {"name": "__main__", "argv": ["--lr", "0.1"], "helper": 7}
