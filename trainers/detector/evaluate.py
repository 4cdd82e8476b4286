"""The flip detector: does the Conformer encoder run forwards or backwards in time?

Schmitt et al. (ICASSP 2025) find that an AED's encoder sometimes learns to reverse time; the decoder's
cross-attention then *decreases* monotonically over the labels. At every evaluation we read, on a fixed
held-out set (`trainers.detector.readings`, `trainers.detector.gradients`):

1. **Attention**: per utterance the direction of the cross-attention (+1 diagonal, -1 anti-diagonal), its
   focus (mean peak relative to uniform), and the fraction of utterances reading backwards (a flip that hits
   only long or heavily padded utterances would average away in the mean). A start-edge sink (the first
   `initial_frames` frames drawing `sink_lift` times their uniform share) is a reading of its own: direction
   and focus are read again on the attention outside it, so a sink that grows over the labels cannot read
   as a backward direction. Where labels share words (BPE pieces), the words' overlap says whether a
   word-level alignment points.
2. **Gradient maps** G_0..G_L and their directions: G_0 (the encoder input) runs forwards whenever the
   frontend is sane; in a reversed encoder every G_i from the flipping block on runs backwards. The attention
   alone can mislead (early, nearly flat attention drifts backwards over a normal encoder), so `reversed`
   also requires the encoder's gradients to agree. The G_0 maps also give the paper's gradient alignment,
   scored by its time-stamp error (TSE) against the reference word spans where the corpus has them.
3. **Mechanism**: per block MHSA dominance and self-attention direction, and the paper's first step: the
   cross-attention mass on the initial encoder frames, and how the initial frames' self-attention reaches
   the rest of the utterance.

Shapes: B utterances, U of them with gradient maps, S label positions, T' encoder frames, L blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainers.config import DetectorConfig
from trainers.data import Batch
from trainers.detector.alignment import time_stamp_error
from trainers.detector.gradients import gradient_alignment, gradient_maps
from trainers.detector.readings import (
    as_numpy,
    attention_argmax,
    attention_readings,
    block_directions_per_utterance,
    cross_initial_mass,
    dominance_ratios,
    flip_block,
    initial_frames,
    label_lengths_from_mask,
    miss_rate,
    outside_sink,
    self_attention_directions_per_utterance,
    self_initial_links,
    word_overlap,
    word_spans,
)
from trainers.detector.verdict import Evaluation, focused, judge

FRAME_MS = 10.0  # one input frame
ATTENTION_PLOT_UTTERANCES = 3


# ----------------------------------------------------------------------------------------------------------
# One evaluation


@dataclass
class _BatchReading:
    """One held-out batch's teacher-forced pass (no gradients): sums and per-utterance readings."""

    loss: float  # mean over the batch's targets (labels + EOS)
    accuracy: float
    targets: int
    frames: int  # valid encoder frames, the weight of this batch's dominance norms
    block_norms: list[dict[str, float]]
    attention: np.ndarray  # (B, S, T')
    label_lengths: np.ndarray  # (B,)
    enc_lengths: np.ndarray  # (B,)
    per_utterance: dict[str, np.ndarray]  # name -> (B,) or (L, B)


def read_attention(
    attention: np.ndarray,
    label_lengths: np.ndarray,
    enc_lengths: np.ndarray,
    word_index: list[np.ndarray | None],
    cfg: DetectorConfig,
) -> dict[str, np.ndarray]:
    """Per utterance (B,), the readings of (B, S, T') cross-attention: direction, peak and focus of the whole
    attention; the start-edge sink (`cross_initial_mass`, `cross_initial_lift`, and `sink_frames`, the
    frames taken out, 0 where the lift stays under `cfg.sink_lift`); direction, peak and focus again outside
    the sink (`outside_sink_*`); and the words' overlap outside the sink (NaN where labels are words)."""
    per_utterance = attention_readings(attention, label_lengths, enc_lengths)
    mass, lift = cross_initial_mass(attention, label_lengths, enc_lengths, cfg.initial_frames)
    sink = lift >= cfg.sink_lift
    outside = outside_sink(attention, enc_lengths, cfg.initial_frames, sink)
    # Without a sink `outside` is `attention` bit for bit, and so are its readings: read it once.
    outside_readings = (
        attention_readings(outside, label_lengths, enc_lengths) if sink.any() else per_utterance
    )
    per_utterance.update(
        cross_initial_mass=mass,
        cross_initial_lift=lift,
        sink_frames=np.where(sink, initial_frames(enc_lengths, cfg.initial_frames), 0),
        **{f"outside_sink_{name}": value.copy() for name, value in outside_readings.items()},
        word_overlap=word_overlap(outside, label_lengths, enc_lengths, word_index),
    )
    return per_utterance


def attention_figures(per_utterance: dict[str, np.ndarray], cfg: DetectorConfig) -> dict[str, float]:
    """An evaluation's attention figures from `read_attention`'s per-utterance readings: means over the
    utterances, and the fraction reading backwards (<= -min_direction); the word overlap's mean over the
    utterances that have one (NaN if none has)."""
    m = cfg.min_direction
    figures = {}
    for prefix, key in (("attention_", ""), ("outside_sink_", "outside_sink_")):
        directions = per_utterance[f"{key}direction"]
        figures.update(
            {
                f"{prefix}direction": float(directions.mean()),
                f"{prefix}peak": float(per_utterance[f"{key}peak"].mean()),
                f"{prefix}focus": float(per_utterance[f"{key}focus"].mean()),
                f"{prefix}backward_fraction": float((directions <= -m).mean()),
            }
        )
    overlaps = per_utterance["word_overlap"]
    return {
        **figures,
        "cross_initial_mass": float(per_utterance["cross_initial_mass"].mean()),
        "cross_initial_lift": float(per_utterance["cross_initial_lift"].mean()),
        "word_overlap": float(np.nanmean(overlaps)) if np.isfinite(overlaps).any() else math.nan,
    }


def _read_batch(
    model: torch.nn.Module, batch: Batch, cfg: DetectorConfig, label_smoothing: float
) -> _BatchReading:
    with torch.no_grad():
        out = model(batch.features, batch.feature_lengths, batch.labels, batch.label_lengths, collect=True)
    logits, targets = out.logits[out.target_mask].float(), out.targets[out.target_mask]
    # The decoder's own attention: while it is forced (model.forced_attention_*), the forced target says
    # nothing about which way the model reads.
    attention = as_numpy(out.learned_attention).astype(np.float64)
    enc_lengths = as_numpy(out.encoder.lengths).astype(np.int64)
    label_lengths = label_lengths_from_mask(out.target_mask)
    per_utterance = read_attention(attention, label_lengths, enc_lengths, batch.word_index, cfg)
    self_attention = [as_numpy(w).astype(np.float64) for w in out.encoder.self_attention]
    links = [self_initial_links(w, enc_lengths, cfg.initial_frames) for w in self_attention]
    per_utterance.update(
        self_attention_direction=np.stack(
            [self_attention_directions_per_utterance(w, enc_lengths) for w in self_attention]
        ),
        self_initial_reach=np.stack([link.reach for link in links]),
        self_initial_pull=np.stack([link.pull for link in links]),
        self_initial_entropy=np.stack([link.entropy for link in links]),
    )
    return _BatchReading(
        loss=float(F.cross_entropy(logits, targets, label_smoothing=label_smoothing)),
        accuracy=float((logits.argmax(-1) == targets).float().mean()),
        targets=len(targets),
        frames=int(enc_lengths.sum()),
        block_norms=out.encoder.block_norms,
        attention=attention,
        label_lengths=label_lengths,
        enc_lengths=enc_lengths,
        per_utterance=per_utterance,
    )


def _pooled_norms(readings: list[_BatchReading]) -> list[dict[str, float]]:
    """Per-block mean norms over all held-out frames (each batch's mean weighted by its frames)."""
    total = sum(r.frames for r in readings)
    return [
        {
            key: sum(r.block_norms[b][key] * r.frames for r in readings) / total
            for key in readings[0].block_norms[b]
        }
        for b in range(len(readings[0].block_norms))
    ]


def _pooled_mean(means: list[float], counts: list[int]) -> float:
    """The mean over all items of per-batch means (one batch: its own mean, bit for bit)."""
    if len(means) == 1:
        return means[0]
    return sum(m * n for m, n in zip(means, counts, strict=True)) / sum(counts)


def _gradient_counts(total: int, sizes: list[int]) -> list[int]:
    """How many utterances of each held-out batch get gradient maps: `total`, spread evenly over batches."""
    counts = [0] * len(sizes)
    for i in range(total):
        open_batches = [j for j in range(len(sizes)) if counts[j] < sizes[j]]
        if not open_batches:
            break
        j = open_batches[i % len(open_batches)]
        counts[j] += 1
    return counts


@dataclass
class _GradientReading:
    """Gradient maps of the first utterances of each held-out batch, read at that batch's padding."""

    directions: np.ndarray  # (L+1, U) per utterance
    aligned: list[list[tuple[int, int]] | None]  # per utterance: label spans in input frames
    truth: list[list[tuple[int, int]] | None]  # per utterance: reference word spans
    word_index: list[np.ndarray | None]
    label_truth: list[list[tuple[int, int]] | None]  # per utterance: reference span of each label
    attention: list[np.ndarray]  # per utterance: (S, T') cross-attention
    label_lengths: np.ndarray  # (U,)
    enc_lengths: np.ndarray  # (U,)
    first_maps: np.ndarray | None  # (L+1, S, T') of the first utterance, for the plot


def _read_gradients(
    model: torch.nn.Module,
    batches: list[Batch],
    readings: list[_BatchReading],
    cfg: DetectorConfig,
    subsampling: int,
) -> _GradientReading:
    counts = _gradient_counts(cfg.gradient_utterances, [len(r.label_lengths) for r in readings])
    directions, aligned, truth, words, label_truth, attention = [], [], [], [], [], []
    label_lengths, enc_lengths, first_maps = [], [], None
    for batch, reading, n in zip(batches, readings, counts, strict=True):
        if n == 0:
            continue
        sub = batch.take(n)
        maps = as_numpy(gradient_maps(model, sub, cfg.gradient_chunk)).astype(np.float64)
        labels_n, frames_n = reading.label_lengths[:n], reading.enc_lengths[:n]
        directions.append(block_directions_per_utterance(maps, labels_n, frames_n))
        feature_lengths = as_numpy(sub.feature_lengths).astype(np.int64)
        aligned += gradient_alignment(
            maps[0], labels_n, frames_n, feature_lengths, subsampling, cfg.blank_score
        )
        truth += sub.spans
        words += sub.word_index
        label_truth += [sub.label_spans(i) for i in range(n)]
        attention += list(reading.attention[:n])
        label_lengths.append(labels_n)
        enc_lengths.append(frames_n)
        if first_maps is None:
            first_maps = maps[:, 0, : labels_n[0], : frames_n[0]]
    return _GradientReading(
        directions=np.concatenate(directions, axis=1),
        aligned=aligned,
        truth=truth,
        word_index=words,
        label_truth=label_truth,
        attention=attention,
        label_lengths=np.concatenate(label_lengths),
        enc_lengths=np.concatenate(enc_lengths),
        first_maps=first_maps,
    )


def _alignment_scores(g: _GradientReading, reverse: bool, subsampling: int) -> dict[str, float]:
    """Word-level TSE of the gradient alignment, and how often attention / alignment miss the true spans.

    Only utterances with both an alignment and reference spans count; without any, every score is NaN
    (missing, never 0)."""
    done = [
        i for i, (a, t) in enumerate(zip(g.aligned, g.truth, strict=True)) if a is not None and t is not None
    ]
    predicted = [span for i in done for span in word_spans(g.aligned[i], g.word_index[i])]
    reference = [span for i in done for span in g.truth[i]]
    boundary, position = time_stamp_error(predicted, reference) if done else (math.nan, math.nan)
    attended = [
        attention_argmax(g.attention[i][None], g.label_lengths[i : i + 1], g.enc_lengths[i : i + 1], reverse)[
            0
        ]
        for i in done
    ]
    centres = [np.array([(s + e) // 2 // subsampling for s, e in g.aligned[i]]) for i in done]
    label_truth = [g.label_truth[i] for i in done]
    return {
        "tse_boundary_ms": boundary * FRAME_MS,
        "tse_position_ms": position * FRAME_MS,
        "attention_miss_rate": miss_rate(attended, label_truth, subsampling),
        "alignment_miss_rate": miss_rate(centres, label_truth, subsampling),
    }


def _plot_arrays(first: _BatchReading, batch: Batch, g: _GradientReading, blocks, subsampling) -> dict:
    """Plot inputs: the first batch's first utterances' attention with their label spans, and the first
    utterance's gradient maps."""
    n = min(ATTENTION_PLOT_UTTERANCES, len(first.attention))
    rows = int(first.label_lengths[:n].max())
    span_array = np.full((n, rows, 2), -1, dtype=np.int64)  # input frames, -1: padding or no truth
    for i in range(n):
        spans = batch.label_spans(i)
        if spans is not None:
            span_array[i, : len(spans)] = spans
    return {
        "attention": first.attention[:n, :rows].astype(np.float32),  # (n, S, T') label rows only
        "attention_directions": first.per_utterance["direction"][:n].astype(np.float64),
        "outside_sink_directions": first.per_utterance["outside_sink_direction"][:n].astype(np.float64),
        "sink_frames": first.per_utterance["sink_frames"][:n].astype(np.int64),  # 0: no sink taken out
        "label_lengths": first.label_lengths[:n].astype(np.int64),
        "enc_lengths": first.enc_lengths[:n].astype(np.int64),
        "spans": span_array,
        "subsampling": np.asarray(subsampling),
        "gradient_maps": (g.first_maps if g.first_maps is not None else np.zeros((0, 0, 0))).astype(
            np.float32
        ),
        "block_directions": np.asarray(blocks, dtype=np.float64),
    }


def evaluate(
    model: torch.nn.Module,
    batches: Batch | list[Batch],
    step: int,
    cfg: DetectorConfig,
    subsampling: int,
    label_smoothing: float = 0.0,
) -> Evaluation:
    """Read every detector signal on the held-out batches and label the model.

    One teacher-forced pass per batch (no gradients) gives loss, accuracy, attention and mechanism for all
    utterances; `cfg.gradient_utterances` of them, spread over the batches and read at their batch's own
    padding, also get gradient maps, alignment and TSE. The model runs in eval mode (its mode is restored)
    with its schedules read at `step` (`model.set_step`; None: their end), which also labels the Evaluation.
    While the cross-attention is forced, the attention read is the decoder's learned one.
    """
    batches = [batches] if isinstance(batches, Batch) else list(batches)
    was_training = model.training
    model.eval()
    model.set_step(step)
    try:
        readings = [_read_batch(model, b, cfg, label_smoothing) for b in batches]
        g = _read_gradients(model, batches, readings, cfg, subsampling)
    finally:
        model.train(was_training)

    def pooled(name: str) -> np.ndarray:
        return np.concatenate([r.per_utterance[name] for r in readings], axis=-1)

    attention = attention_figures({name: pooled(name) for name in readings[0].per_utterance}, cfg)
    direction = attention["outside_sink_direction"]
    blocks = g.directions.mean(-1)
    ffn_ratio, residual_ratio = dominance_ratios(_pooled_norms(readings))
    scores = _alignment_scores(g, direction < 0, subsampling)
    # Only a focused, monotonic attention can be "shifted"; the argmax of flat attention means nothing.
    monotonic = abs(direction) >= cfg.min_direction and focused(
        attention["outside_sink_peak"],
        attention["outside_sink_focus"],
        cfg,
        word_overlap=attention["word_overlap"],
    )
    evaluation = Evaluation(
        step=int(step),
        loss=_pooled_mean([r.loss for r in readings], [r.targets for r in readings]),
        accuracy=_pooled_mean([r.accuracy for r in readings], [r.targets for r in readings]),
        block_directions=[float(d) for d in blocks],
        flip_block=flip_block(blocks, cfg.min_direction),
        **attention,
        mhsa_ffn_ratio=ffn_ratio,
        mhsa_residual_ratio=residual_ratio,
        self_attention_direction=[float(v) for v in pooled("self_attention_direction").mean(-1)],
        self_initial_reach=[float(v) for v in pooled("self_initial_reach").mean(-1)],
        self_initial_pull=[float(v) for v in pooled("self_initial_pull").mean(-1)],
        self_initial_entropy=[float(v) for v in pooled("self_initial_entropy").mean(-1)],
        shifted=bool(
            monotonic and scores["attention_miss_rate"] - scores["alignment_miss_rate"] > cfg.shift_margin
        ),
        arrays=_plot_arrays(readings[0], batches[0], g, blocks, subsampling),
        **scores,
    )
    evaluation.label, evaluation.reason = judge(evaluation, cfg)
    return evaluation
