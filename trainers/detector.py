"""The flip detector: does the Conformer encoder run forwards or backwards in time?

Schmitt et al. (ICASSP 2025) find that an AED's encoder sometimes learns to reverse time; the decoder's
cross-attention then *decreases* monotonically over the labels. We read three kinds of evidence on held-out
utterances:

1. **Attention direction.** The centre of mass over encoder frames of each label's cross-attention row,
   Spearman-correlated with the label index: +1 diagonal (normal), -1 anti-diagonal (reversed), ~0 unaligned.
2. **Gradient maps.** G_i[s, t] = ||d log p(a_s | a_<s, x) / d h_i[t]||_2 for the encoder input (i = 0) and
   every block output h_i. Their direction, computed the same way, says where time flips: G_0 is diagonal
   whenever the frontend is sane, and in a reversed encoder every G_i from the flipping block on is
   anti-diagonal (the paper: block 10 of 12). The attention alone can mislead: early, nearly flat attention
   can drift backwards over a normal encoder, so `reversed` also requires the encoder's gradients to agree.
3. **Mechanism.** Per block, ||MHSA|| / ||FFN1|| and ||MHSA|| / ||residual|| (MHSA dominance, the paper's
   explanation) and the direction of the block's self-attention (anti-diagonal reads -1).

The G_0 maps also give the paper's gradient alignment (see `trainers.alignment`), scored by its time-stamp
error against the true spans, and a `shifted` flag: the attention is monotonic and focused (mean peak at least
`min_peak`) but points outside the true spans much more often than the gradient alignment does.

Shapes: B utterances, U of them with gradient maps, S label positions, T input frames, T' encoder frames,
L blocks, H heads, D model width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import Tensor

from trainers.alignment import gradient_scores_to_log, time_stamp_error, viterbi_align
from trainers.config import DetectorConfig
from trainers.reported import EVALUATION_FIELDS, PER_BLOCK

LABELS = ("normal", "reversed", "undecided")
LABEL_CODES = {"normal": 1.0, "reversed": -1.0, "undecided": 0.0}
FRAME_MS = 10.0  # one input frame
ATTENTION_PLOT_UTTERANCES = 3


# ----------------------------------------------------------------------------------------------------------
# Direction: centre of mass and Spearman correlation with the index


def _numpy(x: Tensor | np.ndarray | list) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def centre_of_mass(weights: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(..., N) non-negative weights, (...) valid lengths -> (...) mean position over the valid entries.

    A row without mass has no centre; it is put in the middle of its valid range, which adds no direction.
    """
    n = weights.shape[-1]
    valid = np.arange(n) < np.asarray(lengths)[..., None]
    mass = np.where(valid, weights, 0.0)
    total = mass.sum(-1)
    middle = (np.asarray(lengths, dtype=np.float64) - 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = (mass * np.arange(n)).sum(-1) / total
    return np.where(total > 0, centre, middle)


def masked_spearman(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Spearman correlation of (..., N) values with their index 0..n-1, over the first `counts` (...) entries.

    Vectorised over the leading axes. Fewer than two entries, or constant values, give 0.0 (no direction).
    Values are rounded to 1e-6 first, so that float noise between equal centres does not rank as an order.
    """
    values = np.round(np.asarray(values, dtype=np.float64), 6)
    counts = np.asarray(counts, dtype=np.float64)
    n = values.shape[-1]
    valid = np.arange(n) < counts[..., None]
    # Padding ranks after every valid entry, so the valid entries keep ranks 1..count (ties averaged).
    ranks = rankdata(np.where(valid, values, np.inf), axis=-1)
    index = np.arange(1, n + 1, dtype=np.float64)
    safe_counts = np.maximum(counts, 1.0)[..., None]
    rank_dev = np.where(valid, ranks - (ranks * valid).sum(-1, keepdims=True) / safe_counts, 0.0)
    index_dev = np.where(valid, index - (counts[..., None] + 1) / 2, 0.0)
    covariance = (rank_dev * index_dev).sum(-1)
    scale = np.sqrt((rank_dev**2).sum(-1) * (index_dev**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = covariance / scale
    return np.where(scale > 1e-12, rho, 0.0)


def spearman_direction(centres: np.ndarray | Tensor) -> float:
    """Spearman correlation of (S,) positions with the label index: +1 forwards, -1 backwards, 0 constant."""
    centres = _numpy(centres).astype(np.float64).reshape(-1)
    return float(masked_spearman(centres, np.asarray(len(centres))))


# ----------------------------------------------------------------------------------------------------------
# Cross-attention


def label_lengths_from_mask(target_mask: Tensor | np.ndarray) -> np.ndarray:
    """(B, S) target mask (labels + EOS) -> (B,) number of real labels: the EOS row is not a label."""
    return _numpy(target_mask).astype(bool).sum(-1) - 1


def attention_direction(
    cross_attention: Tensor | np.ndarray, target_mask: Tensor | np.ndarray, enc_lengths: Tensor | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per utterance: the direction of the cross-attention and its mean peak.

    cross_attention (B, S, T'), target_mask (B, S), enc_lengths (B,) -> directions (B,), peak (B,).
    direction = Spearman(label index, centre of mass over valid frames of each label row); the EOS row is
    dropped. peak = mean over label rows of the largest weight.
    """
    attention = _numpy(cross_attention).astype(np.float64)
    label_lengths = label_lengths_from_mask(target_mask)
    enc_lengths = _numpy(enc_lengths).astype(np.int64)
    centres = centre_of_mass(attention, enc_lengths[:, None])  # (B, S)
    directions = masked_spearman(centres, label_lengths)
    rows = np.arange(attention.shape[1])[None, :] < label_lengths[:, None]  # (B, S)
    frames = np.arange(attention.shape[2])[None, :] < enc_lengths[:, None]  # (B, T')
    peaks = np.where(frames[:, None, :], attention, 0.0).max(-1)  # (B, S)
    peak = (peaks * rows).sum(-1) / np.maximum(rows.sum(-1), 1)
    return directions, peak


def attention_argmax(
    cross_attention: np.ndarray, label_lengths: np.ndarray, enc_lengths: np.ndarray, reverse: bool
) -> list[np.ndarray]:
    """Per utterance the argmax frame (N_b,) of each label row, mapped t -> T'_b - 1 - t if `reverse`.

    For a reversed encoder, frame t of the attended sequence holds what happened at input time T' - 1 - t.
    """
    out = []
    for weights, n, length in zip(cross_attention, label_lengths, enc_lengths, strict=True):
        peak = weights[:n, :length].argmax(-1)
        out.append(length - 1 - peak if reverse else peak)
    return out


# ----------------------------------------------------------------------------------------------------------
# Gradient maps


def _subset(batch: Any, utterances: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The first U utterances, trimmed to their own longest input and label sequence."""
    features, lengths = batch.features[:utterances], batch.feature_lengths[:utterances]
    labels, label_lengths = batch.labels[:utterances], batch.label_lengths[:utterances]
    return features[:, : int(lengths.max())], lengths, labels[:, : int(label_lengths.max())], label_lengths


def gradient_maps(model: torch.nn.Module, batch: Any, step: int | None, utterances: int) -> Tensor:
    """G_i[u, s, t] = ||d log p(a_s | a_<s, x) / d h_i[t]||_2 over D, for i = 0..L: a (L+1, U, S, T') tensor.

    h_0 is the encoder input (after the frontend), h_i the output of block i. S is the longest label sequence
    of the U utterances (no EOS row); padded label positions and padded frames are zero. The model runs in
    eval mode (restored after) so that copies do not interact through dropout or batch statistics.

    Every label needs its own backward pass. Instead of S passes, each utterance is replicated S times into
    one batch of U*S copies; copy (u, s) contributes only log p(a_s) of utterance u, so one gradient of the
    sum w.r.t. all hidden tensors gives every map at once.
    """
    features, lengths, labels, label_lengths = _subset(batch, utterances)
    num_utts, num_labels = labels.shape
    copies = num_utts * num_labels
    position = torch.arange(num_labels, device=labels.device).repeat(num_utts)  # (U*S,) s of copy (u, s)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(
                features.repeat_interleave(num_labels, 0),
                lengths.repeat_interleave(num_labels, 0),
                labels.repeat_interleave(num_labels, 0),
                label_lengths.repeat_interleave(num_labels, 0),
                step=step,
            )
            copy = torch.arange(copies, device=labels.device)
            logits = out.logits[copy, position].float()  # (U*S, V): position s of copy (u, s)
            log_prob = logits.log_softmax(-1).gather(-1, out.targets[copy, position][:, None]).squeeze(-1)
            real = position < label_lengths.repeat_interleave(num_labels, 0)  # padded labels: no gradient
            hidden = out.encoder.hidden
            grads = torch.autograd.grad((log_prob * real).sum(), hidden, allow_unused=True)
    finally:
        model.train(was_training)
    frames = out.encoder.mask.view(num_utts, num_labels, -1)[:, :1]  # (U, 1, T')
    maps = [
        torch.zeros(num_utts, num_labels, h.shape[1], device=h.device)
        if g is None
        else g.detach().float().norm(dim=-1).view(num_utts, num_labels, -1)
        for g, h in zip(grads, hidden, strict=True)
    ]
    return torch.stack(maps) * frames


def block_directions(
    maps: Tensor | np.ndarray, label_lengths: Tensor | np.ndarray, enc_lengths: Tensor | np.ndarray
) -> np.ndarray:
    """(L+1, U, S, T') gradient maps -> (L+1,) mean over utterances of the Spearman direction of each G_i.

    Each label row is normalised over its valid frames and reduced to its centre of mass, as for attention.
    """
    maps = _numpy(maps).astype(np.float64)
    label_lengths = _numpy(label_lengths).astype(np.int64)
    enc_lengths = _numpy(enc_lengths).astype(np.int64)
    centres = centre_of_mass(maps, enc_lengths[None, :, None])  # (L+1, U, S)
    return masked_spearman(centres, label_lengths[None, :]).mean(-1)


def flip_block(directions: np.ndarray | list[float], min_direction: float) -> int | None:
    """The block where time flips, or None.

    Only a clear flip counts: G_0 forwards (>= min_direction), the last block backwards (<= -min_direction).
    The flip block is then the first block i >= 1 from which every direction is <= -min_direction.
    """
    directions = np.asarray(directions, dtype=np.float64)
    if len(directions) < 2 or directions[0] < min_direction or directions[-1] > -min_direction:
        return None
    backwards = directions <= -min_direction
    # A block i qualifies when it and every later block are backwards: a reversed cumulative AND.
    tail_backwards = np.logical_and.accumulate(backwards[::-1])[::-1]
    return int(np.flatnonzero(tail_backwards[1:])[0] + 1)


# ----------------------------------------------------------------------------------------------------------
# Mechanism: MHSA dominance and self-attention direction


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def dominance_ratios(block_norms: list[dict[str, float]]) -> tuple[list[float], list[float]]:
    """Per block ||MHSA|| / ||FFN1|| and ||MHSA|| / ||residual|| (mean L2 norms); NaN when undefined."""
    ffn = [_ratio(n["mhsa"], n["ffn1"]) for n in block_norms]
    residual = [_ratio(n["mhsa"], n["residual"]) for n in block_norms]
    return ffn, residual


def self_attention_directions(
    self_attention: list[Tensor] | list[np.ndarray], enc_lengths: Tensor | np.ndarray
) -> list[float]:
    """Per block, the mean over utterances and heads of Spearman(query index, centre of mass over keys).

    self_attention: L tensors (B, H, T', T'); only valid queries and keys count. An anti-diagonal pattern
    (each frame attends to its mirror image) reads -1.
    """
    enc_lengths = _numpy(enc_lengths).astype(np.int64)
    out = []
    for weights in self_attention:
        weights = _numpy(weights).astype(np.float64)
        centres = centre_of_mass(weights, enc_lengths[:, None, None])  # (B, H, T')
        out.append(float(masked_spearman(centres, enc_lengths[:, None]).mean()))
    return out


# ----------------------------------------------------------------------------------------------------------
# Gradient alignment, time-stamp error, and the shifted-attention check


def gradient_alignment(
    maps_0: np.ndarray,
    label_lengths: np.ndarray,
    enc_lengths: np.ndarray,
    feature_lengths: np.ndarray,
    subsampling: int,
    blank_score: float,
) -> list[list[tuple[int, int]] | None]:
    """Viterbi alignment of each utterance's G_0 (U, S, T'); spans in input frames, None where T' < N.

    Encoder frame t covers input frames [t * subsampling, (t + 1) * subsampling), clipped to the length.
    """
    out: list[list[tuple[int, int]] | None] = []
    for grads, n, length, frames in zip(maps_0, label_lengths, enc_lengths, feature_lengths, strict=True):
        try:
            spans = viterbi_align(gradient_scores_to_log(grads[:n, :length]), blank_score)
        except ValueError:
            out.append(None)
            continue
        out.append([(min(s * subsampling, frames), min(e * subsampling, frames)) for s, e in spans])
    return out


def _encoder_span(span: tuple[int, int], subsampling: int) -> tuple[int, int]:
    """A true [start, end) input-frame span -> the encoder frames it touches, widened by one on each side."""
    start, end = span
    return start // subsampling - 1, -(-end // subsampling) + 1


def miss_rate(frames: list[np.ndarray], spans: list[list[tuple[int, int]]], subsampling: int) -> float:
    """Fraction of labels whose encoder frame falls outside its (widened) true span; NaN without labels."""
    hits = [
        lo <= t < hi
        for positions, truth in zip(frames, spans, strict=True)
        for t, (lo, hi) in zip(positions, (_encoder_span(s, subsampling) for s in truth), strict=True)
    ]
    return 1.0 - float(np.mean(hits)) if hits else math.nan


# ----------------------------------------------------------------------------------------------------------
# One evaluation


@dataclass
class Evaluation:
    """The detector's reading at one training step. Per-block lists: index j is block j (block_directions,
    with j = 0 the encoder input) or block j + 1 (mechanism lists, which have no entry for the input)."""

    step: int
    loss: float
    accuracy: float
    attention_direction: float  # mean over utterances
    attention_peak: float  # mean over utterances
    block_directions: list[float]  # G_0 .. G_L
    flip_block: int | None = None
    mhsa_ffn_ratio: list[float] = field(default_factory=list)
    mhsa_residual_ratio: list[float] = field(default_factory=list)
    self_attention_direction: list[float] = field(default_factory=list)
    tse_boundary_ms: float = math.nan
    tse_position_ms: float = math.nan
    attention_miss_rate: float = math.nan
    alignment_miss_rate: float = math.nan
    shifted: bool = False
    reversal_score: float | None = None  # None: derived from the directions
    label: str = "undecided"
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # for plots only

    def __post_init__(self) -> None:
        if self.reversal_score is None:
            # High = reversed: both the attention and the last block read backwards.
            encoder = self.block_directions[-1] if self.block_directions else 0.0
            self.reversal_score = -(self.attention_direction + encoder) / 2

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics: lists expanded (`block_direction_0`, `mhsa_ffn_ratio_1` = block 1, ...),
        `label_code` +1 normal / -1 reversed / 0 undecided, `shifted` 0/1, `flip_block` -1 when None."""
        out = {name: float(getattr(self, name)) for name in EVALUATION_FIELDS}
        out["flip_block"] = float(-1 if self.flip_block is None else self.flip_block)
        out["shifted"] = float(self.shifted)
        out["label_code"] = LABEL_CODES[self.label]
        out.update({f"block_direction_{i}": float(v) for i, v in enumerate(self.block_directions)})
        for name in PER_BLOCK[1:]:  # the mechanism lists, numbered from block 1
            out.update({f"{name}_{i}": float(v) for i, v in enumerate(getattr(self, name), start=1)})
        return out

    def to_dict(self) -> dict[str, Any]:
        """Every field but `arrays`, as plain Python values (JSON-able; NaN stays NaN)."""
        return _plain({f.name: getattr(self, f.name) for f in fields(self) if f.name != "arrays"})


def _plain(value: Any) -> Any:
    """numpy scalars and arrays -> Python numbers and lists, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _teacher_forced(out: Any, label_smoothing: float) -> tuple[float, float]:
    """Cross-entropy (label-smoothed, mean over labels and EOS) and accuracy of a teacher-forced pass."""
    logits, targets = out.logits[out.target_mask].float(), out.targets[out.target_mask]
    loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    return float(loss), float((logits.argmax(-1) == targets).float().mean())


def _plot_arrays(
    attention: np.ndarray,
    directions: np.ndarray,
    label_lengths: np.ndarray,
    enc_lengths: np.ndarray,
    spans: list[list[tuple[int, int]]],
    maps: np.ndarray,
    blocks: np.ndarray,
    subsampling: int,
) -> dict[str, np.ndarray]:
    """Plot inputs: the first utterances' attention with spans, and the first utterance's gradient maps."""
    n = min(ATTENTION_PLOT_UTTERANCES, len(attention))
    rows = int(label_lengths[:n].max())
    span_array = np.full((n, rows, 2), -1, dtype=np.int64)  # input frames, -1 padding
    for i, utterance_spans in enumerate(spans[:n]):
        span_array[i, : len(utterance_spans)] = utterance_spans
    return {
        "attention": attention[:n, :rows].astype(np.float32),  # (n, S, T') label rows only
        "attention_directions": directions[:n].astype(np.float64),
        "label_lengths": label_lengths[:n].astype(np.int64),
        "enc_lengths": enc_lengths[:n].astype(np.int64),
        "spans": span_array,
        "subsampling": np.asarray(subsampling),
        "gradient_maps": maps[:, 0, : label_lengths[0], : enc_lengths[0]].astype(np.float32),  # (L+1, S, T')
        "block_directions": blocks.astype(np.float64),
    }


def evaluate(
    model: torch.nn.Module,
    batch: Any,
    step: int,
    cfg: DetectorConfig,
    subsampling: int,
    label_smoothing: float = 0.0,
) -> Evaluation:
    """Read every detector signal on `batch` (held-out utterances) and label the model.

    One teacher-forced pass with collect=True (no gradients) gives loss, accuracy, attention and mechanism for
    all utterances; the first `cfg.gradient_utterances` also get gradient maps, alignment and TSE.
    The model runs in eval mode; its mode is restored after.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs = (batch.features, batch.feature_lengths, batch.labels, batch.label_lengths)
            out = model(*inputs, step=step, collect=True)
        loss, accuracy = _teacher_forced(out, label_smoothing)
        attention = _numpy(out.cross_attention).astype(np.float64)
        enc_lengths = _numpy(out.encoder.lengths).astype(np.int64)
        label_lengths = label_lengths_from_mask(out.target_mask)
        directions, peaks = attention_direction(attention, out.target_mask, enc_lengths)
        ffn_ratio, residual_ratio = dominance_ratios(out.encoder.block_norms)
        self_directions = self_attention_directions(out.encoder.self_attention, enc_lengths)

        utts = min(cfg.gradient_utterances, len(label_lengths))
        maps = _numpy(gradient_maps(model, batch, step, utts)).astype(np.float64)
    finally:
        model.train(was_training)

    g_labels, g_frames = label_lengths[:utts], enc_lengths[:utts]
    blocks = block_directions(maps, g_labels, g_frames)
    attention_mean = float(directions.mean())
    reverse = attention_mean < 0
    feature_lengths = _numpy(batch.feature_lengths).astype(np.int64)[:utts]
    truth = batch.spans[:utts]

    aligned = gradient_alignment(maps[0], g_labels, g_frames, feature_lengths, subsampling, cfg.blank_score)
    done = [i for i, spans in enumerate(aligned) if spans is not None]
    boundary, position = time_stamp_error(
        [span for i in done for span in aligned[i]], [span for i in done for span in truth[i]]
    )
    # Where each label is attended / aligned, in encoder frames, on the same (aligned) utterances.
    attended = attention_argmax(attention[done], g_labels[done], g_frames[done], reverse)
    centres = [np.array([(s + e) // 2 // subsampling for s, e in aligned[i]]) for i in done]
    attention_miss = miss_rate(attended, [truth[i] for i in done], subsampling)
    alignment_miss = miss_rate(centres, [truth[i] for i in done], subsampling)
    # Only a focused, monotonic attention can be "shifted"; the argmax of flat attention means nothing.
    peak = float(peaks.mean())
    monotonic = abs(attention_mean) >= cfg.min_direction and peak >= cfg.min_peak
    shifted = bool(monotonic and attention_miss - alignment_miss > cfg.shift_margin)

    evaluation = Evaluation(
        step=int(step),
        loss=loss,
        accuracy=accuracy,
        attention_direction=attention_mean,
        attention_peak=peak,
        block_directions=[float(d) for d in blocks],
        flip_block=flip_block(blocks, cfg.min_direction),
        mhsa_ffn_ratio=ffn_ratio,
        mhsa_residual_ratio=residual_ratio,
        self_attention_direction=self_directions,
        tse_boundary_ms=boundary * FRAME_MS,
        tse_position_ms=position * FRAME_MS,
        attention_miss_rate=attention_miss,
        alignment_miss_rate=alignment_miss,
        shifted=shifted,
        arrays=_plot_arrays(
            attention, directions, label_lengths, enc_lengths, batch.spans, maps, blocks, subsampling
        ),
    )
    evaluation.label = classify(evaluation, cfg)
    return evaluation


# ----------------------------------------------------------------------------------------------------------
# Labels, verdict, early stop


def reads_reversed(attention, first_block, last_block, min_direction: float):
    """The direction rule of a flip: attention <= -m, G_0 >= m (the input still runs forwards) and the last
    block <= -m. Works elementwise on floats, arrays and pandas Series alike, so `sweep.report` reads its
    curves with the very rule `classify` applies."""
    m = min_direction
    return (attention <= -m) & (first_block >= m) & (last_block <= -m)


def classify(e: Evaluation, cfg: DetectorConfig) -> str:
    """Label one evaluation `normal`, `reversed` or `undecided` (m = cfg.min_direction).

    * undecided: the model has not learnt to attend yet: accuracy < cfg.min_accuracy, or mean attention peak
      < cfg.min_peak, or |attention direction| < m.
    * reversed: attention direction <= -m AND G_0 direction >= m AND last block's direction <= -m. The
      encoder's gradients must agree with the attention: this rejects the trap where early, flat attention
      drifts backwards over an encoder that still runs forwards.
    * normal: attention direction >= m and last block's direction >= m.
    * anything else (the signals disagree): undecided.
    """
    m = cfg.min_direction
    if e.accuracy < cfg.min_accuracy or e.attention_peak < cfg.min_peak or abs(e.attention_direction) < m:
        return "undecided"
    if not e.block_directions:
        return "undecided"
    first, last = e.block_directions[0], e.block_directions[-1]
    if reads_reversed(e.attention_direction, first, last, m):
        return "reversed"
    if e.attention_direction >= m and last >= m:
        return "normal"
    return "undecided"


def time_to_flip(history: list[Evaluation]) -> int | None:
    """The first step from which every later evaluation is `reversed`; None if the last one is not."""
    start = None
    for e in reversed(history):
        if e.label != "reversed":
            break
        start = e.step
    return start


def transient(history: list[Evaluation], cfg: DetectorConfig) -> dict[str, Any]:
    """The backward phase a final label hides: evaluations whose attention reads reversed (<= -m), whether or
    not the encoder agreed. The prototype saw such phases with absolute positions while attention was flat."""
    if not history:
        return {}
    backward = [e.step for e in history if e.attention_direction <= -cfg.min_direction]
    return {
        "min_attention_direction": min(e.attention_direction for e in history),
        "max_reversal_score": max(e.reversal_score for e in history),
        "backward_evaluations": len(backward),
        "backward_first_step": backward[0] if backward else None,
        "backward_last_step": backward[-1] if backward else None,
    }


def block_ratios(history: list[Evaluation], block: int, step: int) -> dict[str, float]:
    """Block `block`'s (1-based) MHSA/FFN and MHSA/residual norm ratios at the last evaluation at or before
    `step` (NaN if there is none, or the block is the input)."""
    readings = [e for e in history if e.step <= step and len(e.mhsa_ffn_ratio) >= block >= 1]
    if not readings:
        return {"mhsa_ffn_ratio": math.nan, "mhsa_residual_ratio": math.nan}
    e = readings[-1]
    return {
        "mhsa_ffn_ratio": e.mhsa_ffn_ratio[block - 1],
        "mhsa_residual_ratio": e.mhsa_residual_ratio[block - 1],
    }


def flip_mechanism(history: list[Evaluation], block: int, flip_step: int) -> dict[str, float]:
    """The paper's mechanism read off the flipping block: its norm ratios at the last evaluation before the
    flip and at the end (the paper: MHSA comes to dominate the FFN/residual path)."""
    before = block_ratios(history, block, flip_step - 1)
    after = block_ratios(history, block, history[-1].step)
    return {
        f"{name}_{when}": value
        for when, ratios in (("before", before), ("after", after))
        for name, value in ratios.items()
    }


def verdict(history: list[Evaluation], cfg: DetectorConfig) -> dict[str, Any]:
    """A run's final answer from its evaluations.

    label: the last evaluation's label if the last `cfg.confirm` evaluations all carry it, else undecided.
    time_to_flip: see `time_to_flip`. flip_block: the last evaluation's, if the label is reversed.
    shifted: the last evaluation's flag. Plus the last evaluation's key figures, the backward phase
    (`transient`) and, for a reversed run, the flipping block's norm ratios before and after the flip
    (`flip_mechanism`).
    """
    if not history:
        return {"label": "undecided", "time_to_flip": None, "flip_block": None, "shifted": False}
    last = history[-1]
    recent = history[-cfg.confirm :]
    confirmed = len(recent) == cfg.confirm and all(e.label == last.label for e in recent)
    label = last.label if confirmed else "undecided"
    flip_step, block = time_to_flip(history), last.flip_block if label == "reversed" else None
    mechanism = flip_mechanism(history, block, flip_step) if block is not None and flip_step else {}
    return {
        "label": label,
        "time_to_flip": flip_step,
        "flip_block": block,
        "shifted": bool(last.shifted),
        "step": last.step,
        "accuracy": last.accuracy,
        "attention_direction": last.attention_direction,
        "attention_peak": last.attention_peak,
        "encoder_direction": last.block_directions[-1] if last.block_directions else math.nan,
        "reversal_score": last.reversal_score,
        "tse_boundary_ms": last.tse_boundary_ms,
        "tse_position_ms": last.tse_position_ms,
        "g0_direction": last.block_directions[0] if last.block_directions else math.nan,
        **transient(history, cfg),
        **mechanism,
    }


def should_stop(history: list[Evaluation], cfg: DetectorConfig) -> bool:
    """Early stop: enabled, at least cfg.min_steps, and the last cfg.patience labels equal and decided."""
    if not cfg.early_stop or len(history) < cfg.patience or history[-1].step < cfg.min_steps:
        return False
    labels = {e.label for e in history[-cfg.patience :]}
    return len(labels) == 1 and labels != {"undecided"}
