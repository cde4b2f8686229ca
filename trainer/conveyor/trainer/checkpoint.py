"""Checkpoints that survive a crash at any instant: written atomically, loaded only when whole.

This module moves a checkpoint to and from disk; what it holds is owned by
`conveyor.trainer.training_state.TrainingState` (`state_dict` / `load_state_dict`).

`save` writes to a temporary file in the same directory (named `.latest.pt.<pid>.tmp`, never
`latest.pt`), flushes and fsyncs it, then `os.replace`s it over `latest.pt` and fsyncs the directory.
A process killed mid-write leaves only a temporary file, which `load` never reads (and `remove_partials`
deletes); `latest.pt` is always the previous complete checkpoint or the new one.

`load` returns None — and says why on stderr — for a missing file or one that fails to load (a truncated
or foreign file), so training starts fresh instead of crashing. Files are read with
`torch.load(weights_only=True)`: the state holds only tensors and plain Python values (RNG states are
converted), so loading a checkpoint never executes code.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conveyor.trainer.progress import main_print

TEMP_SUFFIX = ".tmp"


def save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with temp.open("wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, corrupt or not a checkpoint at all: never fatal
        main_print(f"checkpoint {path} could not be loaded ({type(error).__name__}: {error}); ignoring it")
        return None
    if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
        main_print(f"checkpoint {path} is not a Conveyor checkpoint; ignoring it")
        return None
    return state


def remove_partials(directory: Path) -> list[Path]:
    """Delete temporary files a crashed writer left behind; return what was removed."""
    if not directory.is_dir():
        return []
    removed = [p for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)]
    for partial in removed:
        partial.unlink(missing_ok=True)
    return removed


# --- random number generator state -----------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """This process's RNG states in plain types (loadable with weights_only=True)."""
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
