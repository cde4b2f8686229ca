"""The exported program: a model directory's network as a file that needs none of the code that built it.

Evaluation, ensembles and serving used to rebuild every network from `conveyor.trainer.models` and
load `weights.pt` into it. That cannot work for a user's own model whose code is not importable where
it is served, so training also writes `model.pt2`, a `torch.export` program: the network's forward
pass as an ATen graph together with its parameters and buffers, traced in eval mode with a dynamic
batch dimension (any batch size, including 0 and 1, runs the same graph). Loading it needs only torch.

Why torch.export: TorchScript (`torch.jit`), the format TorchServe and Triton's PyTorch backend load,
is deprecated in favour of it, and TorchServe itself is in limited maintenance, which is why KServe is
deprecating its PyTorch runtime (kserve/kserve #4568). `torch.export` is what PyTorch maintains, and
the same `.pt2` can feed AOTInductor or ExecuTorch later.

The model is traced on CPU (moved there for the trace and back, so no CUDA-only kernel is baked into
the graph) and moved to the serving device on load. Export is best effort, as that issue also reports
(models using vmap fail to export): a model torch.export cannot capture (data-dependent control flow,
a batch size fixed in the code, an input that is not one tensor) gets no `model.pt2` and one line on
stderr saying why; the stages then rebuild it from its code and `weights.pt` as before. A program is
written only after it reproduced the eager model's output on a batch size it was not traced with.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.export.passes import move_to_device_pass
from torch.nn.parallel import DistributedDataParallel
from torch.utils import _pytree as pytree

from conveyor.trainer.artifacts import EXPORT_FILE

TOLERANCE = 1e-4  # absolute and relative: the same kernels run, so only op ordering may differ


class ExportError(Exception):
    """Why a model has no exported program (reported, never raised to the caller of export_model)."""


def export_model(model: nn.Module, example_input: torch.Tensor, model_dir: Path) -> Path | None:
    """Export `model` (in eval mode, dynamic batch) to `model_dir/model.pt2` and return the path, or
    None (one line on stderr says why) when it cannot be exported. `example_input` is one batch
    `[n, *input_shape]`, on any device; only its shape and dtype matter unless the model branches on
    values. DDP and torch.compile wrappers are looked through; the model's mode and device are restored."""
    model = unwrap(model)
    was_training = model.training
    devices = {tensor.device for tensor in (*model.parameters(), *model.buffers())}
    device = devices.pop() if len(devices) == 1 else None
    moved = device is not None and device.type != "cpu"  # a model spread over devices stays put
    model.eval()
    try:
        if moved:
            model.cpu()
            example_input = example_input.cpu() if isinstance(example_input, torch.Tensor) else example_input
        with quiet_export():
            program = _export(model, example_input)
            return _save(program, Path(model_dir))
    except Exception as error:  # torch.export raises many types; none of them may fail a finished run
        (Path(model_dir) / EXPORT_FILE).unlink(missing_ok=True)  # a stale program would not match weights.pt
        print(
            f"conveyor: model not exported ({_reason(error)}); evaluation and serving will rebuild "
            f"it from its code and {EXPORT_FILE} will be absent",
            file=sys.stderr,
            flush=True,
        )
        return None
    finally:
        model.train(was_training)
        if moved and device is not None:
            model.to(device)


def load_exported(
    model_dir: Path, device: str | torch.device = "cpu", check_inputs: bool = True
) -> nn.Module:
    """The exported program of `model_dir` as a callable module on `device`.

    With `check_inputs` (the default) it is torch's own `ExportedProgram.module()`, which checks each
    input's structure and shape. `check_inputs=False` is for callers that validate inputs themselves,
    as the predictor does: the graph is then called directly (`ExportedGraph`), without those checks
    (~60 us of CPU a call) or the rest of that module's per-call machinery.
    """
    program = torch.export.load(Path(model_dir) / EXPORT_FILE)
    target = torch.device(device)
    if target.type != "cpu":
        program = move_to_device_pass(program, target)
    if not check_inputs:
        with contextlib.suppress(ValueError):
            return ExportedGraph(program)
    module = program.module(check_guards=check_inputs)
    module.validate_inputs = check_inputs  # type: ignore[assignment]  # torch's attribute, untyped
    return module


class ExportedGraph(nn.Module):
    """An exported program's graph called as a plain function: one tensor in, its output out.

    `ExportedProgram.module()` flattens inputs and outputs with pytree, runs forward hooks and guard
    checks on every call; here the lifted parameters and buffers are passed straight to the graph,
    whose ATen calls then cost less than the eager module's per-layer `nn.Module` dispatch (measured in
    benchmarks/RESULTS.md, "serving an exported model"). Raises ValueError for a program that is not
    one tensor in and one out (the predictor's contract), so the caller can fall back."""

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        from torch.export.graph_signature import InputKind, OutputKind

        super().__init__()
        signature = program.graph_signature
        inputs = [i for i, spec in enumerate(signature.input_specs) if spec.kind == InputKind.USER_INPUT]
        outputs = [i for i, spec in enumerate(signature.output_specs) if spec.kind == OutputKind.USER_OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{len(inputs)} inputs and {len(outputs)} outputs, not one of each")
        lifted: list[torch.Tensor | None] = []
        for spec in signature.input_specs:
            if spec.kind == InputKind.USER_INPUT:
                lifted.append(None)
            elif spec.target in program.state_dict:
                lifted.append(program.state_dict[spec.target])
            elif spec.target in program.constants:
                lifted.append(program.constants[spec.target])
            else:
                raise ValueError(f"input {spec.target!r} of kind {spec.kind.name} is not a tensor it holds")
        self.graph = program.graph_module
        self.lifted, self.slot, self.output = lifted, inputs[0], outputs[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arguments = list(self.lifted)
        arguments[self.slot] = x
        result: torch.Tensor = self.graph(*arguments)[self.output]
        return result


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(compiled := getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = compiled
        else:
            return model


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """When torch.export gives up it logs dozens of lines and prints the partial graph to stderr; the
    one line export_model prints says what matters."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def _export(model: nn.Module, example_input: torch.Tensor) -> torch.export.ExportedProgram:
    if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0:
        raise ExportError("the example input must be one tensor with a batch dimension, [n, *input_shape]")
    if example_input.shape[0] == 0:
        raise ExportError("the example input is an empty batch; pass at least one row")
    # torch.export specialises sizes 0 and 1, so a one-row example would fix the batch at 1.
    traced = (
        example_input if example_input.shape[0] > 1 else example_input.expand(2, *example_input.shape[1:])
    )
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        # nn.LSTM reassigns its flat weight list while traced; the graph is still right (checked below).
        warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights")
        program = torch.export.export(model, (traced.contiguous(),), dynamic_shapes=({0: batch},))
    with torch.no_grad():
        check = torch.cat([traced, traced[:1]])  # a batch size the program was not traced with
        _compare(model(check), program.module()(check))
    if any(tensor.device.type != "cpu" for tensor in program.state_dict.values()):
        program = move_to_device_pass(program, "cpu")
    return program


def _compare(eager: object, exported: object) -> None:
    expected, spec = pytree.tree_flatten(eager)
    actual, actual_spec = pytree.tree_flatten(exported)
    if spec != actual_spec:
        raise ExportError(f"the exported program returns {actual_spec}, the model {spec}")
    for want, got in zip(expected, actual, strict=True):
        if isinstance(want, torch.Tensor) and not torch.allclose(
            want.float(), got.float(), rtol=TOLERANCE, atol=TOLERANCE, equal_nan=True
        ):
            difference = float((want.float() - got.float()).abs().max())
            raise ExportError(
                f"the exported program disagrees with the model (max difference {difference:.3g})"
            )


def _save(program: torch.export.ExportedProgram, model_dir: Path) -> Path:
    """Write through a temp file and rename, so a reader never loads half a program."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / EXPORT_FILE
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".tmp-", suffix=f".{EXPORT_FILE}")
    os.close(fd)
    try:
        torch.export.save(program, tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _reason(error: Exception) -> str:
    """The first two lines of the message: torch.export puts the cause on the second."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = " ".join(lines[:2])
    if not isinstance(error, ExportError):
        reason = f"{type(error).__name__}: {reason}"
    return reason[:400]
