"""scripts/checkov passes: the rendered chart and what the operator creates for every example pipeline
fail no checkov check except the skips written beside them, each with a reason.

Runs only where the pinned checkov is installed (`scripts/checkov` installs it on first use, ~300 MB,
so neither CI nor this test installs it) and helm is built."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conveyor.devcluster.cluster import default_bin_dir

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "checkov"
TEMPLATES = REPO / "charts" / "conveyor" / "templates"


def checkov_venv() -> Path:
    version = re.search(r"^CHECKOV_VERSION=(\S+)$", SCRIPT.read_text(), re.MULTILINE)
    assert version is not None
    default = Path.home() / ".cache" / "conveyor" / f"checkov-{version.group(1)}"
    return Path(os.environ.get("CONVEYOR_CHECKOV_VENV", default))


def test_chart_and_workloads_pass_checkov() -> None:
    venv, helm = checkov_venv(), default_bin_dir() / "helm"
    if not os.access(venv / "bin" / "checkov", os.X_OK):
        pytest.skip(f"checkov not installed at {venv}: run scripts/checkov once (it installs it)")
    if not os.access(helm, os.X_OK):
        pytest.skip(f"helm not built at {helm}; run scripts/build-control-plane")
    env = {**os.environ, "HELM": str(helm), "CONVEYOR_CHECKOV_VENV": str(venv)}
    done = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    summaries = re.findall(r"Passed checks: (\d+), Failed checks: (\d+), Skipped checks: (\d+)", done.stdout)
    assert len(summaries) == 2, done.stdout  # the chart, then the workloads
    for passed, failed, _ in summaries:
        assert int(passed) > 100 and int(failed) == 0


def test_every_skip_in_the_chart_has_a_reason() -> None:
    """A skip is `checkov.io/skipN: CHECK=reason`; a bare check id would silence it without saying why."""
    skips = []
    for template in TEMPLATES.glob("*.yaml"):
        skips += re.findall(r"checkov\.io/skip\d+:\s*(.+)", template.read_text())
    assert skips
    for skip in skips:
        check, _, reason = yaml.safe_load(skip).partition("=")
        assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(reason) > 30, skip
