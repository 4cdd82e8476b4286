"""A synthetic, speech-like corpus with exact ground truth.

No speech corpus can be downloaded here, so utterances are rendered from label sequences: every label has a
prototype feature vector (optionally clustered into confusable groups), is held for a random number of 10 ms
frames, blends smoothly into the next one, and sits between leading and trailing silence, all under white
noise. A bigram model over labels gives the decoder a language model to learn. The exact frame span of every
label is kept, so alignments can be scored against the truth. `channel_offset` shifts each utterance by its
own constant vector, as speakers and channels do. With `fixed_frames` every utterance has the
same length (the trailing silence fills it up), so frame T - t is as easy to address from absolute
positions as frame t.

Determinism: the corpus itself (prototypes, bigram model, held-out set) depends only on `data.seed`; the
training stream depends on (data.seed, trial seed, step), so a resumed trial sees exactly the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import uniform_filter1d

from trainers.config import DataConfig

EOS = 0  # also BOS, as in the paper; labels are 1..num_labels
_HELDOUT_STREAM = 2**31 - 1  # a stream id no trial seed uses for training


@dataclass
class Batch:
    """A padded batch. Spans are [start, end) in input frames, one per label."""

    features: torch.Tensor  # (B, T, F) float32, zero-padded
    feature_lengths: torch.Tensor  # (B,) int64
    labels: torch.Tensor  # (B, N) int64 in 1..num_labels, zero-padded
    label_lengths: torch.Tensor  # (B,) int64
    spans: list[list[tuple[int, int]]]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.features.to(device),
            self.feature_lengths.to(device),
            self.labels.to(device),
            self.label_lengths.to(device),
            self.spans,
        )

    def take(self, n: int) -> Batch:
        """The first n utterances."""
        return Batch(
            self.features[:n],
            self.feature_lengths[:n],
            self.labels[:n],
            self.label_lengths[:n],
            self.spans[:n],
        )


class SyntheticCorpus:
    """Renders utterances from label sequences; see the module docstring."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0])
        dim, n = cfg.feature_dim, cfg.num_labels
        groups = cfg.confusion_groups or n
        # Group centres are far apart; labels sit prototype_separation away from their centre, so small
        # separation with few groups makes labels confusable.
        centres = rng.normal(0.0, 3.0, size=(groups, dim))
        offsets = rng.normal(0.0, 1.0, size=(n, dim))
        offsets *= (
            cfg.prototype_separation / np.linalg.norm(offsets, axis=1, keepdims=True) * np.sqrt(dim) / 2
        )
        self.prototypes = np.concatenate(
            [np.zeros((1, dim)), centres[np.arange(n) % groups] + offsets]  # row 0: silence
        ).astype(np.float32)
        self.bigram = rng.dirichlet(np.full(n, cfg.bigram_concentration), size=n + 1)  # row 0: start
        self.vocab_size = n + 1

    def utterance(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """One utterance: features (T, F), labels (N,), spans [(start, end)] in frames."""
        cfg = self.cfg
        length = rng.integers(cfg.min_labels, cfg.max_labels + 1)
        labels = np.empty(length, dtype=np.int64)
        previous = 0
        for i in range(length):
            previous = labels[i] = 1 + rng.choice(cfg.num_labels, p=self.bigram[previous])
        durations = rng.integers(cfg.min_label_frames, cfg.max_label_frames + 1, size=length)
        lead, trail = rng.integers(cfg.min_silence_frames, cfg.max_silence_frames + 1, size=2)
        if cfg.fixed_frames:
            trail = cfg.fixed_frames - lead - durations.sum()
        segment_ids = np.concatenate([[0], labels, [0]])
        segment_lengths = np.concatenate([[lead], durations, [trail]])
        frame_ids = np.repeat(segment_ids, segment_lengths)
        features = self.prototypes[frame_ids]
        if cfg.transition_frames > 0:
            # A moving average over the label track gives smooth transitions without moving label centres.
            features = uniform_filter1d(features, size=2 * cfg.transition_frames + 1, axis=0, mode="nearest")
        features = features + rng.normal(0.0, cfg.noise, size=features.shape)
        if cfg.channel_offset > 0:
            features = features + rng.normal(0.0, cfg.channel_offset, size=(1, features.shape[1]))
        ends = lead + np.cumsum(durations)
        spans = [(int(e - d), int(e)) for e, d in zip(ends, durations, strict=True)]
        return features.astype(np.float32), labels, spans

    def batch(self, rng: np.random.Generator, size: int) -> Batch:
        return collate([self.utterance(rng) for _ in range(size)])

    def train_batch(self, seed: int, step: int, size: int) -> Batch:
        """The batch a trial with this seed trains on at this step (same every time it is asked for)."""
        return self.batch(np.random.default_rng([self.cfg.seed, seed, step, 1]), size)

    def heldout(self, size: int) -> Batch:
        """A fixed held-out set, the same for every trial of this corpus."""
        return self.batch(np.random.default_rng([self.cfg.seed, _HELDOUT_STREAM]), size)


def collate(utterances: list[tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]]) -> Batch:
    feature_lengths = torch.tensor([len(f) for f, _, _ in utterances])
    label_lengths = torch.tensor([len(y) for _, y, _ in utterances])
    dim = utterances[0][0].shape[1]
    features = torch.zeros(len(utterances), int(feature_lengths.max()), dim)
    labels = torch.zeros(len(utterances), int(label_lengths.max()), dtype=torch.long)
    for i, (f, y, _) in enumerate(utterances):
        features[i, : len(f)] = torch.from_numpy(f)
        labels[i, : len(y)] = torch.from_numpy(y)
    return Batch(features, feature_lengths, labels, label_lengths, [s for _, _, s in utterances])
