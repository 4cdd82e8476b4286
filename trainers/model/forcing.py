"""Forced cross-attention: the decoder's attention weights replaced by a fixed target early in training, then
blended back into the learned ones.

On the centre frame this is the paper's third mitigation (a crutch that lets the decoder learn to attend
before the encoder settles on a direction). On the first frame(s) it imposes the first step of the paper's
mechanism, the cross-attention leaning on the initial frames (an induced run, `trainers.config.run_kind`).

Schedule (`model.forced_attention_steps` F, `model.forced_attention_blend_steps` N): before step F the
decoder uses the target alone; over the next N steps the learned share grows linearly from 0 to 1; from
F + N on, and at step None (the end of every schedule), the learned attention alone.

Targets (`model.forced_attention_at`, k = `model.forced_attention_frames`, in encoder frames, 1-based, clipped
to each utterance's length): centre = frame T' // 2 (0-based, as the mitigation always had it), first = the
first frame, frame = the k-th frame, window = uniform over the first k frames.

The decoder's own weights before forcing stay readable (`AEDOutput.learned_attention`): the flip detector
reads those, since the forced target says nothing about which way the model reads.

Shapes: B batch, T' encoder frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.config import ModelConfig


def learned_share(step: int | None, cfg: ModelConfig) -> float:
    """The weight of the learned cross-attention at `step`: 0 while forced, 1 once released (and at None)."""
    forced_steps, blend_steps = cfg.forced_attention_steps, cfg.forced_attention_blend_steps
    if step is None or step >= forced_steps + blend_steps:
        return 1.0
    if step < forced_steps:
        return 0.0
    return (step - forced_steps) / blend_steps


def forced_target(lengths: Tensor, frames: int, cfg: ModelConfig) -> Tensor:
    """(B, frames) the forced attention of each utterance with `lengths` (B,) valid encoder frames."""
    k = cfg.forced_attention_frames
    if cfg.forced_attention_at == "window":
        width = lengths.clamp(max=k)  # (B,)
        inside = torch.arange(frames, device=lengths.device)[None, :] < width[:, None]
        return inside.float() / width[:, None].float()
    if cfg.forced_attention_at == "centre":
        index = lengths // 2
    elif cfg.forced_attention_at == "first":
        index = torch.zeros_like(lengths)
    else:  # "frame"
        index = lengths.clamp(max=k) - 1
    return F.one_hot(index, frames).float()


@dataclass(frozen=True)
class Forcing:
    """The forced cross-attention at one step: its target and how much of the learned attention is kept."""

    target: Tensor  # (B, T') a distribution over each utterance's valid frames
    learned_share: float  # in [0, 1): 0 = the target alone

    def apply(self, weights: Tensor) -> Tensor:
        """(1 - share) * target + share * weights, for weights (B, ..., T') over the same frames."""
        target = self.target.to(weights.dtype)
        target = target.view(target.shape[0], *([1] * (weights.dim() - 2)), target.shape[-1])
        if self.learned_share == 0.0:
            return target.expand_as(weights)
        return (1.0 - self.learned_share) * target + self.learned_share * weights


def forcing(share: float, lengths: Tensor, frames: int, cfg: ModelConfig) -> Forcing | None:
    """The forcing at a step whose learned share is `share`; None when the learned attention is used alone."""
    if share >= 1.0:
        return None
    return Forcing(forced_target(lengths, frames, cfg), share)
