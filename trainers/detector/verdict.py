"""The labels: one evaluation's label, and a run's verdict from its evaluations (light: no torch).

`trainers.detector.evaluate` reads a model at one step into an `Evaluation`; here `judge` labels it
`normal`, `reversed` or `undecided` and says why an undecided one is undecided, and `verdict` turns a run's
history into its final answer: the confirmed label and its reason, when and where time flipped, the backward
phase a final label hides (`transient`), and the flipping block's mechanism. `reads_reversed` is the one
direction rule of a flip, shared by `judge` and `sweep.report`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from trainers.config import DetectorConfig
from trainers.reported import EVALUATION_FIELDS, PER_BLOCK

LABELS = ("normal", "reversed", "undecided")
LABEL_CODES = {"normal": 1.0, "reversed": -1.0, "undecided": 0.0}
# Why a label is `undecided`, in the order `judge` tests them (`focus` or `sink` at one step: whether the
# attention points only at a start-edge sink); `unconfirmed`: the run's last evaluations disagree
# (`verdict`). Codes are what the MLflow UI charts (`reason_code`, `verdict/reason_code`); 0 = decided.
UNDECIDED_REASONS = ("accuracy", "focus", "sink", "direction", "disagree", "unconfirmed")
REASON_CODES = {reason: float(code) for code, reason in enumerate(UNDECIDED_REASONS, start=1)}


@dataclass
class Evaluation:
    """The detector's reading at one training step. Per-block lists: index j is block j (block_directions,
    with j = 0 the encoder input) or block j + 1 (mechanism lists, which have no entry for the input).

    The `attention_*` figures read the whole cross-attention; the `outside_sink_*` figures read it with the
    start-edge sink taken out (`trainers.detector.readings.outside_sink`) in the utterances that have one, and
    are what `judge` decides on. Without a sink they are the same numbers (None here: copied over)."""

    step: int
    loss: float
    accuracy: float
    attention_direction: float  # mean over utterances
    attention_peak: float  # mean over utterances
    block_directions: list[float]  # G_0 .. G_L
    flip_block: int | None = None
    attention_focus: float = math.nan  # mean peak x T' (1: uniform)
    attention_backward_fraction: float = math.nan  # utterances whose direction <= -min_direction
    cross_initial_mass: float = math.nan  # cross-attention mass on the first k encoder frames
    cross_initial_lift: float = math.nan  # ... relative to uniform attention: the start-edge sink
    outside_sink_direction: float | None = None  # attention direction outside the sink (None: no sink)
    outside_sink_peak: float | None = None
    outside_sink_focus: float | None = None
    outside_sink_backward_fraction: float | None = None
    word_overlap: float = math.nan  # consecutive words' pooled attention overlap, outside the sink (speech)
    mhsa_ffn_ratio: list[float] = field(default_factory=list)
    mhsa_residual_ratio: list[float] = field(default_factory=list)
    self_attention_direction: list[float] = field(default_factory=list)
    self_initial_reach: list[float] = field(default_factory=list)
    self_initial_pull: list[float] = field(default_factory=list)
    self_initial_entropy: list[float] = field(default_factory=list)
    tse_boundary_ms: float = math.nan
    tse_position_ms: float = math.nan
    attention_miss_rate: float = math.nan
    alignment_miss_rate: float = math.nan
    shifted: bool = False
    reversal_score: float | None = None  # None: derived from the directions
    label: str = "undecided"
    reason: str | None = None  # why `undecided` (UNDECIDED_REASONS); None when decided
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # for plots only

    def __post_init__(self) -> None:
        for name in ("direction", "peak", "focus", "backward_fraction"):
            if getattr(self, f"outside_sink_{name}") is None:
                setattr(self, f"outside_sink_{name}", getattr(self, f"attention_{name}"))
        if self.reversal_score is None:
            # High = reversed: both the attention (outside any sink) and the last block read backwards.
            encoder = self.block_directions[-1] if self.block_directions else 0.0
            self.reversal_score = -(self.outside_sink_direction + encoder) / 2

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A checkpoint's history may predate a field: its default, then the same derivations as a new one.
        self.__dict__.update(state)
        self.__post_init__()

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics: lists expanded (`block_direction_0`, `mhsa_ffn_ratio_1` = block 1, ...),
        `label_code` +1 normal / -1 reversed / 0 undecided, `shifted` 0/1, `flip_block` -1 when None."""
        out = {name: float(getattr(self, name)) for name in EVALUATION_FIELDS}
        out["flip_block"] = float(-1 if self.flip_block is None else self.flip_block)
        out["shifted"] = float(self.shifted)
        out["label_code"] = LABEL_CODES[self.label]
        out["reason_code"] = REASON_CODES.get(self.reason, 0.0)
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


# ----------------------------------------------------------------------------------------------------------
# Labels, verdict, early stop


def focused(peak: float, focus: float, cfg: DetectorConfig, *, word_overlap: float = math.nan) -> bool:
    """Whether the cross-attention has learnt to point: its mean peak is at least `min_peak`, or at least
    `min_focus` times uniform, or, where labels share words (`word_overlap` is NaN where they do not: the
    synthetic corpus), consecutive words overlap at most `max_word_overlap`. On utterances of up to
    min_focus / min_peak encoder frames (40 by default) the focus cannot pass where the peak fails, so
    decisions there are what the absolute rule made them; on long utterances a sharp but multi-frame
    attention (peak well below 0.2) counts too; and BPE pieces that all attend their word's frames count when
    the words are apart (`trainers.detector.readings.word_overlap` has the numbers)."""
    return peak >= cfg.min_peak or focus >= cfg.min_focus or word_overlap <= cfg.max_word_overlap


def reads_reversed(attention, first_block, last_block, min_direction: float):
    """The direction rule of a flip: attention <= -m, G_0 >= m (the input still runs forwards) and the last
    block <= -m. Works elementwise on floats, arrays and pandas Series alike, so `sweep.report` reads its
    curves with the very rule `classify` applies."""
    m = min_direction
    return (attention <= -m) & (first_block >= m) & (last_block <= -m)


def judge(e: Evaluation, cfg: DetectorConfig) -> tuple[str, str | None]:
    """Label one evaluation `normal`, `reversed` or `undecided`, and say why an undecided one is (the reason,
    None when decided). m = cfg.min_direction, a = min_agreement; the attention is read outside the
    start-edge sink (`outside_sink_*`: the whole attention where there is none).

    * undecided, `accuracy`: the model has not learnt its labels yet: accuracy < cfg.min_accuracy.
    * undecided, `focus` or `sink`: the attention is not `focused`: `sink` when the initial frames draw at
      least cfg.sink_lift times their uniform share (the only place the attention points is the sink; a
      sink next to a focused alignment does not stop a decision), else `focus`.
    * undecided, `direction`: |attention direction| < m.
    * reversed: attention direction <= -m AND G_0 direction >= m AND last block's direction <= -m, AND at
      least a fraction a of the utterances read backwards. The encoder's gradients must agree with the
      attention: this rejects the trap where early, flat attention drifts backwards over an encoder that
      still runs forwards.
    * normal: attention direction >= m and last block's direction >= m, and at most 1 - a of the utterances
      read backwards (a flip confined to some utterances is not normal).
    * undecided, `disagree`: anything else (attention and the encoder's gradient maps disagree).
    """
    m, agreement = cfg.min_direction, cfg.min_agreement
    direction = e.outside_sink_direction
    if e.accuracy < cfg.min_accuracy:
        return "undecided", "accuracy"
    if not focused(e.outside_sink_peak, e.outside_sink_focus, cfg, word_overlap=e.word_overlap):
        return "undecided", "sink" if e.cross_initial_lift >= cfg.sink_lift else "focus"
    if abs(direction) < m:
        return "undecided", "direction"
    if e.block_directions:
        first, last = e.block_directions[0], e.block_directions[-1]
        backward = e.outside_sink_backward_fraction
        if reads_reversed(direction, first, last, m) and not backward < agreement:
            return "reversed", None
        if direction >= m and last >= m and not backward > 1 - agreement:
            return "normal", None
    return "undecided", "disagree"


def classify(e: Evaluation, cfg: DetectorConfig) -> str:
    """The label `judge` gives one evaluation."""
    return judge(e, cfg)[0]


def time_to_flip(history: list[Evaluation]) -> int | None:
    """The first step from which every later evaluation is `reversed`; None if the last one is not."""
    start = None
    for e in reversed(history):
        if e.label != "reversed":
            break
        start = e.step
    return start


def transient(history: list[Evaluation], cfg: DetectorConfig) -> dict[str, Any]:
    """The backward phase a final label hides: evaluations whose attention (outside any start-edge sink, so a
    growing sink is no backward phase) reads reversed (<= -m), whether or not the encoder agreed; early, flat
    attention often does."""
    if not history:
        return {}
    backward = [e.step for e in history if e.outside_sink_direction <= -cfg.min_direction]
    # Near misses: every direction reads as a flip, whether or not accuracy and peak allowed a decision yet.
    reversed_encoder = [
        e
        for e in history
        if e.block_directions
        and reads_reversed(
            e.outside_sink_direction, e.block_directions[0], e.block_directions[-1], cfg.min_direction
        )
    ]
    reach = [max(e.self_initial_reach, default=math.nan) for e in history]
    return {
        "min_attention_direction": min(e.outside_sink_direction for e in history),
        "max_reversal_score": max(e.reversal_score for e in history),
        "backward_evaluations": len(backward),
        "max_backward_fraction": _nanmax([e.outside_sink_backward_fraction for e in history]),
        "max_cross_initial_lift": _nanmax([e.cross_initial_lift for e in history]),
        "max_self_initial_reach": _nanmax(reach),
        "backward_first_step": backward[0] if backward else None,
        "backward_last_step": backward[-1] if backward else None,
        "reversed_encoder_evaluations": len(reversed_encoder),
    }


def _nanmax(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else math.nan


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
    reason (None when decided): the last evaluation's own reason when it is undecided itself, else
    `unconfirmed` (it is decided, but the evaluations before it disagree). time_to_flip: see `time_to_flip`.
    flip_block: the last evaluation's, if the label is reversed.
    shifted: the last evaluation's flag. Plus the last evaluation's key figures, the backward phase
    (`transient`) and, for a reversed run, the flipping block's norm ratios before and after the flip
    (`flip_mechanism`).
    """
    if not history:
        return {
            "label": "undecided",
            "reason": "unconfirmed",
            "time_to_flip": None,
            "flip_block": None,
            "shifted": False,
        }
    last = history[-1]
    recent = history[-cfg.confirm :]
    confirmed = len(recent) == cfg.confirm and all(e.label == last.label for e in recent)
    label = last.label if confirmed else "undecided"
    reason = None
    if label == "undecided":
        reason = (last.reason or judge(last, cfg)[1]) if last.label == "undecided" else "unconfirmed"
    flip_step, block = time_to_flip(history), last.flip_block if label == "reversed" else None
    mechanism = flip_mechanism(history, block, flip_step) if block is not None and flip_step else {}
    return {
        "label": label,
        "reason": reason,
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
        "attention_focus": last.attention_focus,
        "attention_backward_fraction": last.attention_backward_fraction,
        "cross_initial_mass": last.cross_initial_mass,
        "cross_initial_lift": last.cross_initial_lift,
        "outside_sink_direction": last.outside_sink_direction,
        "outside_sink_focus": last.outside_sink_focus,
        "word_overlap": last.word_overlap,
        **transient(history, cfg),
        **mechanism,
    }


def should_stop(history: list[Evaluation], cfg: DetectorConfig) -> bool:
    """Early stop: enabled, at least cfg.min_steps, and the last cfg.patience labels equal and decided."""
    if not cfg.early_stop or len(history) < cfg.patience or history[-1].step < cfg.min_steps:
        return False
    labels = {e.label for e in history[-cfg.patience :]}
    return len(labels) == 1 and labels != {"undecided"}
