"""The figures a trial reports at every evaluation, by name (light: no torch): the detector and the trainer
build their reports from these lists, and a sweep checks a space file's optimisation objective against them
before anything runs."""

from __future__ import annotations

import re

# Evaluation fields reported as they are (trainers.detector.verdict.Evaluation.metrics).
EVALUATION_FIELDS = (
    "step",
    "loss",
    "accuracy",
    "attention_direction",
    "attention_peak",
    "tse_boundary_ms",
    "tse_position_ms",
    "attention_miss_rate",
    "alignment_miss_rate",
    "reversal_score",
    "attention_focus",  # mean peak x T' (1: uniform)
    "attention_backward_fraction",  # utterances whose attention reads backwards
    "cross_initial_mass",  # cross-attention mass on the first detector.initial_frames encoder frames
    "cross_initial_lift",  # ... relative to uniform attention: a start-edge sink from detector.sink_lift on
    # The attention outside the sink (the whole attention where there is none): what the label is read on.
    "outside_sink_direction",
    "outside_sink_peak",
    "outside_sink_focus",
    "outside_sink_backward_fraction",
    "word_overlap",  # consecutive words' pooled attention overlap (1 - total variation); NaN: label = word
)
# The backward phase so far (trainers.detector.verdict.transient), in every report and at the end. Its
# directions are read outside any start-edge sink.
RUNNING_PHASE = (
    "min_attention_direction",
    "max_reversal_score",
    "backward_evaluations",
    "max_backward_fraction",  # most utterances reading backwards at one evaluation
    "max_cross_initial_lift",  # the paper's first step: cross-attention piled onto the initial frames
    "max_self_initial_reach",  # ... and the initial frames' self-attention reaching the far half (any block)
)
SCALARS = (
    *EVALUATION_FIELDS,
    "flip_block",
    "shifted",
    "label_code",
    "reason_code",  # 0 decided, else trainers.detector.verdict.REASON_CODES
    "train_loss",
    "learning_rate",
    # What is imposed on training at this step (issue "induced"): the MHSA residual scale of the scaled blocks
    # (model.mhsa_scale, or its schedule) and the decoder's learned share of its cross-attention (0 forced,
    # 1 its own: model.forced_attention_*). Plotted beside the readings, and read by `sweep.report` for the
    # step from which an intervention holds still.
    "mhsa_scale",
    "learned_attention_share",
    *RUNNING_PHASE,
)
PER_BLOCK = (
    "block_direction",
    "mhsa_ffn_ratio",
    "mhsa_residual_ratio",
    "self_attention_direction",
    "self_initial_reach",  # initial queries' self-attention mass on the far half of the utterance
    "self_initial_pull",  # other queries' mass on the initial frames, relative to uniform
    "self_initial_entropy",  # initial queries' self-attention entropy / log T' (1: uniform)
)
_PER_BLOCK = re.compile(rf"({'|'.join(PER_BLOCK)})_\d+")


def is_reported(name: str) -> bool:
    """Whether every evaluation report carries `name` (per-block names: `block_direction_3`, ...)."""
    return name in SCALARS or _PER_BLOCK.fullmatch(name) is not None


# The run's summary figures: the numbers in trainers.detector.verdict.verdict besides label, flip_block,
# time_to_flip, shifted and step. They travel in trainers.outcome.TrialOutcome.figures, are logged as
# `verdict/<name>` on the trial's MLflow run and become columns of a sweep's trials table. A new figure:
# compute it in verdict() and add its name here (per-block figures: the name before `_<block>` in
# VERDICT_PER_BLOCK).
VERDICT_FIGURES = (
    # the last evaluation
    "accuracy",
    "attention_direction",
    "attention_peak",
    "encoder_direction",  # the last block's gradient-map direction
    "g0_direction",  # the encoder input's gradient-map direction
    "reversal_score",
    "tse_boundary_ms",
    "tse_position_ms",
    "attention_focus",
    "attention_backward_fraction",
    "cross_initial_mass",
    "cross_initial_lift",
    "outside_sink_direction",
    "outside_sink_focus",
    "word_overlap",
    # the backward phase (trainers.detector.verdict.transient)
    *RUNNING_PHASE,
    "backward_first_step",
    "backward_last_step",
    "reversed_encoder_evaluations",  # attention, G_0 and last block all read as a flip (trap or not)
    # the flip mechanism of a reversed run's flipping block (trainers.detector.verdict.flip_mechanism)
    "mhsa_ffn_ratio_before",
    "mhsa_ffn_ratio_after",
    "mhsa_residual_ratio_before",
    "mhsa_residual_ratio_after",
)
VERDICT_PER_BLOCK: tuple[str, ...] = ()
_VERDICT_PER_BLOCK = re.compile(rf"({'|'.join(VERDICT_PER_BLOCK) or '(?!)'})_\d+")


def is_verdict_figure(name: str) -> bool:
    """Whether `name` is a declared verdict figure (see VERDICT_FIGURES)."""
    return name in VERDICT_FIGURES or _VERDICT_PER_BLOCK.fullmatch(name) is not None
