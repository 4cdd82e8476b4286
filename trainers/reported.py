"""The figures a trial reports at every evaluation, by name (light: no torch): the detector and the trainer
build their reports from these lists, and a sweep checks a space file's optimisation objective against them
before anything runs."""

from __future__ import annotations

import re

# Evaluation fields reported as they are (trainers.detector.Evaluation.metrics).
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
)
# The backward phase so far (trainers.detector.transient), in every report and at the end.
RUNNING_PHASE = ("min_attention_direction", "max_reversal_score", "backward_evaluations")
SCALARS = (
    *EVALUATION_FIELDS,
    "flip_block",
    "shifted",
    "label_code",
    "train_loss",
    "learning_rate",
    *RUNNING_PHASE,
)
PER_BLOCK = ("block_direction", "mhsa_ffn_ratio", "mhsa_residual_ratio", "self_attention_direction")
_PER_BLOCK = re.compile(rf"({'|'.join(PER_BLOCK)})_\d+")


def is_reported(name: str) -> bool:
    """Whether every evaluation report carries `name` (per-block names: `block_direction_3`, ...)."""
    return name in SCALARS or _PER_BLOCK.fullmatch(name) is not None
