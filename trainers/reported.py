"""The figures a trial reports at every evaluation, by name (light: no torch), so that a sweep can check a
space file's optimisation objective before anything runs."""

from __future__ import annotations

import re

SCALARS = (
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
    "flip_block",
    "shifted",
    "label_code",
    "train_loss",
    "learning_rate",
    "min_attention_direction",  # the backward phase so far (trainers.detector.transient)
    "max_reversal_score",
    "backward_evaluations",
)
PER_BLOCK = ("block_direction", "mhsa_ffn_ratio", "mhsa_residual_ratio", "self_attention_direction")
_PER_BLOCK = re.compile(rf"({'|'.join(PER_BLOCK)})_\d+")


def is_reported(name: str) -> bool:
    """Whether every evaluation report carries `name` (per-block names: `block_direction_3`, ...)."""
    return name in SCALARS or _PER_BLOCK.fullmatch(name) is not None
