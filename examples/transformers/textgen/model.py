"""`build(options, info)`, the pipeline's `model.entrypoint`: a BertForSequenceClassification from a
small BertConfig (random initialisation, nothing downloaded) behind a float-ids interface.

Conveyor's stages feed models float32 features, so `forward` takes the token ids as floats and casts
them; with `labels` (the Transformers Trainer) it also returns the loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from conveyor.sdk import ModelInfo
from textgen.data import vocabulary


class TextClassifier(nn.Module):
    def __init__(self, bert: BertForSequenceClassification) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        ids = x.long()
        logits = self.bert(input_ids=ids, attention_mask=(ids != 0).long()).logits
        if labels is None:
            return logits
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def build(options: dict[str, Any], info: ModelInfo) -> nn.Module:
    hidden = int(options.get("hidden", 64))
    config = BertConfig(
        vocab_size=len(vocabulary()),
        hidden_size=hidden,
        num_hidden_layers=int(options.get("layers", 2)),
        num_attention_heads=int(options.get("heads", 2)),
        intermediate_size=2 * hidden,
        max_position_embeddings=info.input_shape[0],
        num_labels=info.num_outputs,
    )
    return TextClassifier(BertForSequenceClassification(config))
