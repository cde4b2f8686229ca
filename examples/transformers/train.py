"""A Transformers `Trainer` script with `conveyor.sdk.hf.ConveyorCallback`: each evaluation is a report
(`eval_accuracy` is the objective `accuracy`), a pruned trial stops, and the model is saved with
`conveyor.sdk.save_model` for evaluation and serving. The data and the model come from the
pipeline's entrypoints (`textgen.data:load`, `textgen.model:build`), so this script, Conveyor's
evaluation and its serving all build the same thing. Under torchrun the Trainer runs DDP itself.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the model is built from a config

import numpy as np
from textgen.data import CLASSES, LENGTH, load
from textgen.model import build
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from conveyor import sdk
from conveyor.sdk.hf import ConveyorCallback


class Examples(Dataset[dict[str, Any]]):
    """(ids, label) pairs as the dicts the Trainer passes to the model as keyword arguments."""

    def __init__(self, pairs: Any) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        x, y = self.pairs[index]
        return {"x": x, "labels": y}


def accuracy(prediction: Any) -> dict[str, float]:
    logits, labels = prediction.predictions, prediction.label_ids
    return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == labels))}


def main() -> None:
    config = sdk.config()  # {} by hand: the defaults below
    options = config.get("model", {}).get("options", {})
    max_steps = config.get("training", {}).get("maxSteps") or 300
    learning_rate = config.get("optimizer", {}).get("learningRate", 0.001)
    model = build(options, sdk.ModelInfo("classification", (LENGTH,), len(CLASSES), tuple(CLASSES)))
    validation = load("validation")
    arguments = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-"),
        max_steps=max_steps,
        learning_rate=learning_rate,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=200,
        eval_strategy="steps",
        eval_steps=max(1, max_steps // 10),
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=Examples(sdk.dataset("train")),
        eval_dataset=Examples(validation),
        compute_metrics=accuracy,
        callbacks=[ConveyorCallback()],
    )
    trainer.train()
    sdk.save_model(model, validation.tensors[0][:4])


if __name__ == "__main__":
    main()
