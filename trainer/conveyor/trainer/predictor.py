"""Inference over a model directory: one network or an ensemble, behind one `predict`.

`load_predictor(model_dir)` reads the model card and returns a `Predictor` whose `predict(x)` takes a
batch of *normalised* inputs (what `data/*.npz` holds) shaped `[n, *feature_shape]` — or flat `[n, F]`
with the same number of values — and returns class probabilities `[n, classes]` for classification or
values `[n]` for regression. `predict_raw(x)` first applies the train-split normalisation stored in the
dataset metadata; serving receives raw features and uses that path.

Ensembles (`kind: ensemble`) reference their members by path, relative to the ensemble directory when
written by `conveyor.trainer.ensemble`, so a run directory that is moved or mounted elsewhere still
loads. Members may themselves be ensembles. Combination rules:

- softVoting: the mean of the members' probabilities (mean of values for regression);
- weightedAverage: the same with the card's weights (normalised to sum 1);
- hardVoting (classification only): each member votes for its argmax class with its weight; the
  returned "probabilities" are the vote shares, plus 1e-3 x the mean member probability so that ties
  go to the class the members were jointly most confident in (too small to outvote any member).

A single model is rebuilt with `build_model` and `weights.pt` whenever its code is here (a built-in
architecture, or an importable `model.entrypoint`): the eager module is faster per call, and
`quantization="int8"` (dynamic int8 quantization of Linear and LSTM layers, CPU only) needs it. A model
no code here can rebuild (one the user's own loop built) runs its exported program (`model.pt2`, see
`conveyor.trainer.export`), so it still evaluates, ensembles and serves. Inference runs whole batches
under `torch.inference_mode` (large inputs in chunks of `CHUNK` rows).
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from torch import nn

from conveyor.trainer.artifacts import EXPORT_FILE, WEIGHTS_FILE, DatasetMetadata, ModelCard, read_card
from conveyor.trainer.config import Quantization

CHUNK = 8192
HARD_VOTE_TIE_BREAK = 1e-3


class Predictor(ABC):
    """A loaded model directory: normalised or raw inputs in, probabilities or values out."""

    def __init__(self, card: ModelCard) -> None:
        self.card = card
        self.metadata: DatasetMetadata = card.dataset
        self.feature_shape = tuple(card.dataset.feature_shape)
        self.features = math.prod(self.feature_shape)
        self._shift, self._scale = normalization_arrays(card.dataset)

    @property
    def task(self) -> str:
        return self.metadata.task

    @property
    def classes(self) -> list[str]:
        return self.metadata.classes

    @property
    def output_width(self) -> int:
        """Columns of `predict`'s result: classes, or 1 for regression (a flat vector)."""
        return self.metadata.output_size

    def shaped(self, x: np.ndarray) -> np.ndarray:
        """`x` as float32 `[n, *feature_shape]`; flat rows of the right width are reshaped."""
        array = np.asarray(x, dtype=np.float32)
        if array.ndim >= 1 and array.shape[1:] == self.feature_shape:
            return array
        if array.ndim >= 1 and array.size == array.shape[0] * self.features and array.shape[0] > 0:
            return array.reshape((array.shape[0], *self.feature_shape))
        raise ValueError(
            f"input shape {list(array.shape)} does not match [n, {', '.join(map(str, self.feature_shape))}]"
        )

    def normalise(self, x_raw: np.ndarray) -> np.ndarray:
        """Apply the train-split statistics to raw inputs."""
        x = self.shaped(x_raw)
        if self._shift is None or self._scale is None:
            return x
        normalised: np.ndarray = ((x - self._shift) / self._scale).astype(np.float32, copy=False)
        return normalised

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities `[n, classes]` or values `[n]` for normalised inputs."""
        x = self.shaped(x)
        if x.shape[0] <= CHUNK:
            return self._predict(x)
        return np.concatenate([self._predict(x[i : i + CHUNK]) for i in range(0, x.shape[0], CHUNK)])

    def predict_raw(self, x_raw: np.ndarray) -> np.ndarray:
        return self.predict(self.normalise(x_raw))

    def labels(self, output: np.ndarray) -> np.ndarray:
        """Class indices for classification probabilities."""
        labels: np.ndarray = output.argmax(axis=1)
        return labels

    @abstractmethod
    def _predict(self, x: np.ndarray) -> np.ndarray: ...


class ModelPredictor(Predictor):
    """One trained network: an eval-mode module, or an exported program's module (always in eval)."""

    def __init__(self, card: ModelCard, module: nn.Module, device: torch.device) -> None:
        super().__init__(card)
        self.module = module
        self.device = device

    def _predict(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=True)
            out = self.module(tensor).float()
            out = torch.softmax(out, dim=1) if self.task == "classification" else out.reshape(-1)
            result: np.ndarray = out.cpu().numpy()
            return result


class EnsemblePredictor(Predictor):
    """Members combined by soft voting, weighted average or hard voting."""

    def __init__(self, card: ModelCard, members: list[Predictor]) -> None:
        super().__init__(card)
        if not members:
            raise ValueError("an ensemble needs at least one member")
        method = card.method or "softVoting"
        if method not in ("softVoting", "hardVoting", "weightedAverage"):
            raise ValueError(
                f"unknown ensemble method {method!r}; use softVoting, hardVoting or weightedAverage"
            )
        if method == "hardVoting" and card.dataset.task != "classification":
            raise ValueError("hardVoting needs a classification task; use softVoting or weightedAverage")
        for member in members:
            if member.feature_shape != self.feature_shape or member.classes != self.classes:
                raise ValueError(
                    f"ensemble member ({member.card.name}) was trained on different data: "
                    f"shape {list(member.feature_shape)} classes {member.classes}"
                )
        self.members = members
        self.method = method
        self.weights = member_weights(method, card.weights, len(members))

    def _predict(self, x: np.ndarray) -> np.ndarray:
        outputs = [member._predict(x) for member in self.members]
        return combine(self.method, outputs, self.weights)


def member_weights(method: str, weights: list[float], count: int) -> np.ndarray:
    """Weights summing to 1: the card's for weightedAverage (and hardVoting if given), else uniform."""
    if weights and method != "softVoting":
        if len(weights) != count:
            raise ValueError(f"ensemble has {count} members but {len(weights)} weights")
        array = np.asarray(weights, dtype=np.float64)
        if (array < 0).any() or array.sum() <= 0:
            raise ValueError(f"ensemble weights must be non-negative and not all zero, got {weights}")
        return array / array.sum()
    return np.full(count, 1.0 / count)


def combine(method: str, outputs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Combine member outputs (probabilities [n, c] or values [n]) with weights summing to 1."""
    stacked = np.stack(outputs).astype(np.float64)  # [members, n, ...]
    if method != "hardVoting":
        combined: np.ndarray = np.tensordot(weights, stacked, axes=1).astype(np.float32)
        return combined
    if stacked.ndim != 3:
        raise ValueError("hardVoting needs class probabilities (a classification task)")
    _, n, classes = stacked.shape
    votes = np.zeros((n, classes))
    rows = np.arange(n)
    for weight, proba in zip(weights, stacked, strict=True):
        votes[rows, proba.argmax(axis=1)] += weight
    mean_proba = stacked.mean(axis=0)
    shares = votes + HARD_VOTE_TIE_BREAK * mean_proba
    normalised: np.ndarray = (shares / shares.sum(axis=1, keepdims=True)).astype(np.float32)
    return normalised


def normalization_arrays(meta: DatasetMetadata) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Shift and scale broadcastable to `[n, *feature_shape]`: per value, per channel or one scalar."""
    stats = meta.normalization
    if stats.method == "none" or not stats.shift:
        return None, None
    shape = tuple(meta.feature_shape)
    shift = np.asarray(stats.shift, dtype=np.float32)
    scale = np.asarray(stats.scale or [1.0] * len(stats.shift), dtype=np.float32)
    if shift.shape != scale.shape:
        raise ValueError(f"normalisation shift has {shift.size} values but scale {scale.size}")
    scale = np.where(scale == 0, np.float32(1.0), scale)
    if shift.size == math.prod(shape):
        target: tuple[int, ...] = shape
    elif len(shape) == 3 and shift.size == shape[0]:
        target = (shape[0], 1, 1)
    elif shift.size == 1:
        target = ()
    else:
        raise ValueError(
            f"normalisation has {shift.size} values; cannot apply to inputs of shape {list(shape)}"
        )
    return shift.reshape(target), scale.reshape(target)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights as saved by training; DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes dropped."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


def quantize(module: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of Linear and LSTM layers (int8 weights, activations quantized per call)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the eager API is deprecated in favour of torchao, still supported
        quantized: nn.Module = quantize_dynamic(module, {nn.Linear, nn.LSTM}, dtype=torch.qint8)
    return quantized


def resolve_member(ensemble_dir: Path, member: str) -> Path:
    path = Path(member)
    return path if path.is_absolute() else (ensemble_dir / path).resolve()


def load_predictor(
    model_dir: Path | str,
    quantization: Quantization = "none",
    device: str | torch.device = "cpu",
) -> Predictor:
    """Load a model directory (single model or ensemble) ready for inference."""
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    target = torch.device(device)
    if quantization == "int8" and target.type != "cpu":
        raise ValueError("int8 dynamic quantization runs on CPU only; use --quantization none on GPU")
    if card.kind == "ensemble":
        members = [
            load_predictor(resolve_member(model_dir, member), quantization, target) for member in card.members
        ]
        return EnsemblePredictor(card, members)
    return ModelPredictor(card, load_module(model_dir, card, quantization, target), target)


def load_module(
    model_dir: Path, card: ModelCard, quantization: Quantization, device: torch.device
) -> nn.Module:
    """The network rebuilt from code when it can be (faster per call: see benchmarks/RESULTS.md, and
    int8 needs it); else the exported program."""
    exported = (model_dir / EXPORT_FILE).is_file()
    if (model_dir / WEIGHTS_FILE).is_file() and code_available(card):
        try:
            return rebuild(model_dir, card, quantization, device)
        except RuntimeError:  # the weights are not this network's (a user's own loop built another)
            if not exported or quantization != "none":
                raise
    if exported and quantization == "none":
        from conveyor.trainer.export import load_exported

        # `Predictor.shaped` checks every input's shape already; torch.export's own checks cost ~60 us a call.
        return load_exported(model_dir, device, check_inputs=False)
    if exported:
        raise ValueError(
            f"{model_dir} can be loaded only from its exported program ({EXPORT_FILE}), and int8 "
            f"quantization rebuilds the network from its code and {WEIGHTS_FILE}; serve it with "
            "quantization none (--quantization none, spec.serving.quantization: none)"
        )
    if (model_dir / WEIGHTS_FILE).is_file():
        raise ValueError(
            f"{model_dir} has no exported program ({EXPORT_FILE}) and its network cannot be rebuilt "
            "here: make spec.model.entrypoint importable (spec.code) or save the model with "
            "conveyor.sdk.save_model"
        )
    raise FileNotFoundError(
        f"{model_dir} holds neither {EXPORT_FILE} nor {WEIGHTS_FILE}: not a trained model directory"
    )


def rebuild(model_dir: Path, card: ModelCard, quantization: Quantization, device: torch.device) -> nn.Module:
    from conveyor.trainer.models import build_model

    module = build_model(card.config.model, card.dataset)
    module.load_state_dict(load_state_dict(model_dir / WEIGHTS_FILE))
    module.eval()
    if quantization == "int8":
        module = quantize(module)
    return module.to(device)


def code_available(card: ModelCard) -> bool:
    """Whether `build_model` can rebuild this model here: a built-in architecture (unless the user's own
    loop built the network itself), or a model.entrypoint that imports."""
    model, training = card.config.model, card.config.training
    if model.entrypoint is None:
        return not training.user_loop
    from conveyor.trainer.config import ConfigError
    from conveyor.trainer.usercode import load_entrypoint

    try:
        load_entrypoint(model.entrypoint, "model.entrypoint")
    except ConfigError:
        return False
    return True
