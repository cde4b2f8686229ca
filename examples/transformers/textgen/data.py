"""`load(split)`, the pipeline's `data.entrypoint`: short generated reviews, labelled by the polarity of
their adjectives, as fixed-length token ids.

The vocabulary is every word the generator can use (built from the templates, so every split shares
it); ids are stored as float32 features, the type every Conveyor stage feeds a model, and the model
turns them back into integers (`textgen.model`).
"""

from __future__ import annotations

import random

import torch
from torch.utils.data import TensorDataset

LENGTH = 12  # tokens per review, [CLS] first, padded with [PAD]
SIZES = {"train": 800, "validation": 200, "test": 200}
SEEDS = {"train": 1, "validation": 2, "test": 3}
SPECIAL = ["[PAD]", "[CLS]"]
SUBJECTS = ["the film", "this book", "the meal", "our stay", "the service", "that show", "the game"]
POSITIVE = ["great", "wonderful", "lovely", "excellent", "superb", "delightful", "fun", "charming"]
NEGATIVE = ["awful", "boring", "dull", "terrible", "poor", "bland", "sad", "clumsy"]
FILLERS = ["really", "quite", "very", "so", "truly", "rather", "just", "honestly"]
ENDINGS = ["overall", "i think", "to be fair", "all in all", "in the end", ""]
CLASSES = ["negative", "positive"]
NOISE = 0.05  # labels flipped at random, as in real reviews: no model scores 100%


def vocabulary() -> dict[str, int]:
    words = {w for phrase in SUBJECTS + ENDINGS for w in phrase.split()}
    words |= {"was", "and", "but", "not", *POSITIVE, *NEGATIVE, *FILLERS}
    return {word: index for index, word in enumerate(SPECIAL + sorted(words))}


def review(rng: random.Random) -> tuple[str, int]:
    """A positive or negative review; "not" flips a clause, so word counts alone do not solve it."""
    label = rng.randrange(2)
    words = POSITIVE if label else NEGATIVE
    other = NEGATIVE if label else POSITIVE
    if rng.random() < 0.3:  # "... was not <opposite>"
        text = f"{rng.choice(SUBJECTS)} was not {rng.choice(FILLERS)} {rng.choice(other)}"
    else:
        text = f"{rng.choice(SUBJECTS)} was {rng.choice(FILLERS)} {rng.choice(words)}"
    if rng.random() < NOISE:
        label = 1 - label
    return f"{text} {rng.choice(ENDINGS)}".strip(), label


def encode(text: str, vocab: dict[str, int]) -> list[int]:
    ids = [vocab["[CLS]"], *(vocab[word] for word in text.split())][:LENGTH]
    return ids + [vocab["[PAD]"]] * (LENGTH - len(ids))


class Reviews(TensorDataset):
    classes = CLASSES  # Conveyor reads the class names from here


def load(split: str) -> Reviews:
    rng = random.Random(SEEDS[split])
    vocab = vocabulary()
    pairs = [review(rng) for _ in range(SIZES[split])]
    ids = torch.tensor([encode(text, vocab) for text, _ in pairs], dtype=torch.float32)
    labels = torch.tensor([label for _, label in pairs], dtype=torch.int64)
    return Reviews(ids, labels)
