"""What a trial trains on: utterances, padded batches, the training stream, and the synthetic corpus.

Any corpus is a `Corpus`: it draws random utterances and names a fixed held-out set. This module turns
those into batches: `TrainStream` gives the batch of every training step (optionally cut from length-sorted
pools, as RETURNN's bucketed ordering does) and `heldout_batches` gives the detector's batches.

The synthetic corpus: no speech corpus can be downloaded here, so utterances are rendered from label
sequences. Every label has a prototype feature vector (optionally clustered into confusable groups), is held
for a random number of 10 ms frames, blends smoothly into the next one, and sits between leading and trailing
silence, under noise. A bigram model over labels gives the decoder a language model to learn. The exact frame
span of every label is kept, so alignments can be scored against the truth. `channel_offset` shifts each
utterance by its own constant vector, as speakers and channels do. With `fixed_frames` every utterance has the
same length (the trailing silence fills it up).

Two feature scales (`data.features`):
* `linear` (the default): prototypes and silence (= 0) under additive white noise; padding is 0, so
  padded frames, silence and the convolutions' zero padding all look alike.
* `log_mel`: what a log-mel frontend sees. Each frame is a non-negative energy per band, 10 ** (log-energy
  track), under multiplicative (periodogram-like, Gamma) noise, then log10 with a floor. Silence sits at
  `silence_level`, speech around `speech_level`, padding at the floor `log_floor`, far below any silence. A
  convolution's zero padding therefore reads as *loud*, which marks the start edge of every utterance, while
  the end of all but the longest utterance in a batch meets the floor: the paper's edges (its log-mel is
  log10 with a 1e-10 floor, padded on the waveform, not normalised).

Determinism: the corpus itself (prototypes, bigram model, held-out set) depends only on `data.seed`; the
training stream depends on (data.seed, trial seed, step), so a resumed trial sees exactly the same batches.

Shapes: T input frames (10 ms), F features, N labels, W words.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.ndimage import uniform_filter1d

from trainers.config import DataConfig
from trainers.corpus import (
    BATCH_STREAM,
    BUCKET_STREAM,
    CORPUS_STREAM,
    HELDOUT_STREAM,
    Corpus,
    Span,
    Utterance,
)

LOG_DECADES_PER_UNIT = 1.0 / 3.0  # log_mel: one prototype unit is a third of a decade of energy


# ----------------------------------------------------------------------------------------------------------
# Batches


@dataclass
class Batch:
    """A padded batch; features are padded with `pad_value` (the corpus's value for 'no signal')."""

    features: torch.Tensor  # (B, T, F) float32
    feature_lengths: torch.Tensor  # (B,) int64
    labels: torch.Tensor  # (B, N) int64 in 1..vocab_size - 1, zero-padded
    label_lengths: torch.Tensor  # (B,) int64
    spans: list[list[Span] | None]  # per utterance: reference word spans in input frames, or None
    word_index: list[np.ndarray | None]  # per utterance: (N,) word of each label, or None (label = word)
    pad_value: float = 0.0

    def to(self, device: torch.device | str) -> Batch:
        return replace(
            self,
            features=self.features.to(device),
            feature_lengths=self.feature_lengths.to(device),
            labels=self.labels.to(device),
            label_lengths=self.label_lengths.to(device),
        )

    def take(self, n: int) -> Batch:
        """The first n utterances (same padding)."""
        return replace(
            self,
            features=self.features[:n],
            feature_lengths=self.feature_lengths[:n],
            labels=self.labels[:n],
            label_lengths=self.label_lengths[:n],
            spans=self.spans[:n],
            word_index=self.word_index[:n],
        )

    def label_spans(self, i: int) -> list[Span] | None:
        """Utterance i's reference span per label (its word's span), or None without ground truth."""
        spans, words = self.spans[i], self.word_index[i]
        if spans is None:
            return None
        return list(spans) if words is None else [spans[w] for w in words]


def collate(utterances: list[Utterance], pad_value: float = 0.0) -> Batch:
    """Pad utterances into one batch: features with `pad_value`, labels with 0."""
    feature_lengths = torch.tensor([len(u.features) for u in utterances])
    label_lengths = torch.tensor([len(u.labels) for u in utterances])
    dim = utterances[0].features.shape[1]
    features = torch.full((len(utterances), int(feature_lengths.max()), dim), float(pad_value))
    labels = torch.zeros(len(utterances), int(label_lengths.max()), dtype=torch.long)
    for i, u in enumerate(utterances):
        features[i, : len(u.features)] = torch.from_numpy(u.features)
        labels[i, : len(u.labels)] = torch.from_numpy(u.labels)
    return Batch(
        features,
        feature_lengths,
        labels,
        label_lengths,
        spans=[u.spans for u in utterances],
        word_index=[u.word_index for u in utterances],
        pad_value=float(pad_value),
    )


# ----------------------------------------------------------------------------------------------------------
# Batching: the training stream and the detector's held-out batches


def sorted_chunks(utterances: list[Utterance], chunks: int) -> list[list[Utterance]]:
    """Sort by length (stable) and cut into `chunks` consecutive groups of (nearly) equal size."""
    order = sorted(range(len(utterances)), key=lambda i: len(utterances[i].features))
    return [[utterances[i] for i in part] for part in np.array_split(order, chunks) if len(part)]


class TrainStream:
    """The batch of every training step, a pure function of (stream seed, step).

    bucket_batches = 0: each batch is `batch_size` independent utterances. N > 0: N consecutive steps share
    one pool of N * batch_size utterances, sorted by length and cut into N batches taken in random order, so
    every batch holds utterances of similar length (little padding) while the length distribution over
    training stays the corpus's own.
    """

    def __init__(
        self, corpus: Corpus, stream_seed: tuple[int, int], batch_size: int, bucket_batches: int = 0
    ):
        self.corpus = corpus
        self.stream_seed = stream_seed
        self.batch_size = batch_size
        self.bucket_batches = bucket_batches
        self._pool: tuple[int, list[Batch]] | None = None  # (pool index, its batches in training order)

    def batch(self, step: int) -> Batch:
        if self.bucket_batches <= 0:
            rng = np.random.default_rng([*self.stream_seed, step, BATCH_STREAM])
            return collate(self.corpus.sample(rng, self.batch_size), self.corpus.pad_value)
        pool, position = divmod(step, self.bucket_batches)
        if self._pool is None or self._pool[0] != pool:
            rng = np.random.default_rng([*self.stream_seed, pool, BUCKET_STREAM])
            utterances = self.corpus.sample(rng, self.bucket_batches * self.batch_size)
            chunks = sorted_chunks(utterances, self.bucket_batches)
            batches = [collate(chunk, self.corpus.pad_value) for chunk in chunks]
            self._pool = (pool, [batches[i] for i in rng.permutation(len(batches))])
        return self._pool[1][position]


def heldout_batches(corpus: Corpus, size: int, batches: int = 1) -> list[Batch]:
    """The detector's held-out set: one batch in corpus order, or `batches` length-sorted batches."""
    utterances = corpus.heldout(size)
    if batches <= 1:
        return [collate(utterances, corpus.pad_value)]
    return [collate(chunk, corpus.pad_value) for chunk in sorted_chunks(utterances, batches)]


# ----------------------------------------------------------------------------------------------------------
# The synthetic corpus


class SyntheticCorpus:
    """Renders utterances from label sequences; see the module docstring."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, CORPUS_STREAM])
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
        self.feature_dim = dim
        self.pad_value = cfg.log_floor if cfg.features == "log_mel" else 0.0

    def log_energy_track(self) -> np.ndarray:
        """log_mel: the clean log10 energy of each prototype row (row 0: silence)."""
        track = self.cfg.speech_level + LOG_DECADES_PER_UNIT * self.prototypes
        track[0] = self.cfg.silence_level
        return track.astype(np.float32)

    def utterance(self, rng: np.random.Generator) -> Utterance:
        """One utterance with its exact label spans."""
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
        log_mel = cfg.features == "log_mel"
        features = (self.log_energy_track() if log_mel else self.prototypes)[frame_ids]
        if cfg.transition_frames > 0:
            # A moving average over the label track gives smooth transitions without moving label centres.
            features = uniform_filter1d(features, size=2 * cfg.transition_frames + 1, axis=0, mode="nearest")
        features = self._log_mel_noise(features, rng) if log_mel else self._white_noise(features, rng)
        ends = lead + np.cumsum(durations)
        spans = [(int(e - d), int(e)) for e, d in zip(ends, durations, strict=True)]
        return Utterance(features.astype(np.float32), labels, spans)

    def _white_noise(self, features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        features = features + rng.normal(0.0, self.cfg.noise, size=features.shape)
        if self.cfg.channel_offset > 0:
            features = features + rng.normal(0.0, self.cfg.channel_offset, size=(1, features.shape[1]))
        return features

    def _log_mel_noise(self, track: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Energy 10 ** track under Gamma noise (coefficient of variation `noise`, like a periodogram
        averaged over a band), a channel gain per band (`channel_offset` decades), then log10 with a floor."""
        cfg = self.cfg
        if cfg.channel_offset > 0:
            track = track + rng.normal(0.0, cfg.channel_offset, size=(1, track.shape[1]))
        energy = np.power(10.0, track.astype(np.float64))
        if cfg.noise > 0:
            shape = 1.0 / cfg.noise**2
            energy = energy * rng.gamma(shape, 1.0 / shape, size=energy.shape)
        return np.log10(np.maximum(energy, 10.0**cfg.log_floor))

    def sample(self, rng: np.random.Generator, size: int) -> list[Utterance]:
        return [self.utterance(rng) for _ in range(size)]

    def heldout(self, size: int) -> list[Utterance]:
        """A fixed held-out set, the same for every trial of this corpus."""
        return self.sample(np.random.default_rng([self.cfg.seed, HELDOUT_STREAM]), size)

    # Convenience for tests and probes: the batch a trial with this seed trains on at this step (no buckets).
    def train_batch(self, seed: int, step: int, size: int) -> Batch:
        return TrainStream(self, (self.cfg.seed, seed), size).batch(step)
