"""What every corpus is, whatever renders or reads it: an utterance, its reference spans, the corpus protocol
and the error a bad corpus raises. It imports nothing of flipsweep, so the synthetic corpus (`trainers.data`),
the speech corpus (`trainers.speech`) and the detector all read these names from one place.

Shapes: T input frames (10 ms), F features, N labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

EOS = 0  # also BOS, as in the paper; labels are 1..vocab_size - 1

# Random streams: the last entry of a numpy seed sequence ([data seed, (trial seed, step,) TAG]), so that
# the streams drawn from one seed never overlap.
CORPUS_STREAM = 0  # the synthetic corpus itself: prototypes and bigram model
BATCH_STREAM = 1  # independently drawn training batches
BUCKET_STREAM = 2  # pools of training batches cut by length (data.bucket_batches)
HELDOUT_STREAM = 2**31 - 1  # the held-out set: no trial seed trains on it
# SpecAugment's masks come from a torch generator, which takes one integer: trial seed * this + step (a
# prime above any trial's steps, so that two seeds' streams do not meet).
SPECAUGMENT_SEED_STRIDE = 1_000_003

Span = tuple[int, int]  # [start, end) in input frames


@dataclass
class Utterance:
    """One utterance. `spans` is the reference alignment: one [start, end) per *word*, or None when the
    corpus has none. `word_index` (N,) maps each label to its word; None means every label is a word."""

    features: np.ndarray  # (T, F) float32
    labels: np.ndarray  # (N,) int64 in 1..vocab_size - 1
    spans: list[Span] | None
    word_index: np.ndarray | None = None


class CorpusError(ValueError):
    """Bad corpus input (a missing file, an empty transcript, unreadable audio, ...): `path` names the file.
    Raised before anything is written; the command-line entry points exit 2 with this one message."""

    def __init__(self, path: str | object, message: str):
        super().__init__(f"{path}: {message}")
        self.path = str(path)
        self.message = message


class Corpus(Protocol):
    """A source of utterances. `sample` must be a pure function of the generator's state."""

    feature_dim: int
    vocab_size: int  # labels 1..vocab_size - 1 plus EOS = 0
    pad_value: float

    def sample(self, rng: np.random.Generator, size: int) -> list[Utterance]: ...

    def heldout(self, size: int) -> list[Utterance]: ...
