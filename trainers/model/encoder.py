"""The Conformer encoder: the frontend, optional absolute positions, then L Conformer blocks, with the
schedules that act on it (self-attention off early, a scaled or scheduled MHSA branch) and the detector's
time-reversed control.

Shapes: B batch, T input frames, T' encoder frames, F features, D d_model, H heads, L blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from trainers.config import ModelConfig
from trainers.model.conformer import ConformerBlock
from trainers.model.frontend import ConvFrontend
from trainers.model.layers import lengths_to_mask, sinusoids


@dataclass
class EncoderOutput:
    hidden: list[Tensor]  # L+1 live tensors (B, T', D): encoder input, then the output of each block
    lengths: Tensor  # (B,) int64 valid encoder frames
    mask: Tensor  # (B, T') bool, True = valid frame
    self_attention: list[Tensor] | None = None  # collect only: per block (B, H, T', T')
    block_norms: list[dict[str, float]] | None = None  # collect only: per block {"ffn1", "mhsa", "residual"}


def reverse_valid_frames(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each utterance's valid frames in time; padding stays at the end. x (B, T', D).

    This exists ONLY as a detector control (`control="reverse_encoder"`): it builds a model that is
    time-reversed by construction, so the flip detector can be checked against a known answer. Never natural.
    """
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, T')
    return x.gather(1, index[:, :, None].expand_as(x))


class ConformerEncoder(nn.Module):
    """Frontend, optional absolute positions, then L Conformer blocks. Returns every block's output.

    Its schedules are read at the step last given to `set_step` (None, the default: the end of every
    schedule, i.e. the trained model).
    """

    def __init__(self, cfg: ModelConfig, *, feature_dim: int):
        super().__init__()
        self.cfg = cfg
        self.frontend = ConvFrontend(cfg, feature_dim=feature_dim)
        self.blocks = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.layers))
        self.set_step(None)

    def set_step(self, step: int | None) -> None:
        """Read the schedules at training step `step` until the next call (None: their end)."""
        self.mixing = step is None or step >= self.cfg.self_attention_off_steps
        self.mhsa_scale = self.mhsa_scale_at(step)

    def mhsa_scale_at(self, step: int | None) -> float:
        """The MHSA residual scale of blocks >= mhsa_scale_from at `step` (None: the end of the schedule)."""
        schedule = self.cfg.mhsa_scale_schedule
        if not schedule:
            return self.cfg.mhsa_scale
        if step is None:
            return schedule[-1][1]
        steps, scales = zip(*schedule, strict=True)
        return float(np.interp(step, steps, scales))

    def embed(self, features: Tensor, feature_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """features (B, T, F) -> the encoder input h_0 (B, T', D) and its lengths (B,): the frontend, then
        absolute positions if configured (added to x * sqrt(D) with `abs_pos_xscale`)."""
        x, lengths = self.frontend(features, feature_lengths)
        if self.cfg.pos_enc in ("abs", "abs+rel_shaw"):
            if self.cfg.abs_pos_xscale:
                x = x * math.sqrt(x.shape[-1])
            x = x + sinusoids(torch.arange(x.shape[1], device=x.device), x.shape[-1]).to(x.dtype)
        return x, lengths

    def forward(self, features: Tensor, feature_lengths: Tensor, *, collect: bool = False) -> EncoderOutput:
        """features (B, T, F), feature_lengths (B,) -> EncoderOutput with hidden (B, T', D) x (L+1)."""
        return self.run_blocks(*self.embed(features, feature_lengths), collect=collect)

    def run_blocks(self, x: Tensor, lengths: Tensor, *, collect: bool = False) -> EncoderOutput:
        """The Conformer blocks on the encoder input x = h_0 (B, T', D) with valid lengths (B,)."""
        mask = lengths_to_mask(lengths, x.shape[1])
        reverse_at = self.cfg.control_block if self.cfg.control == "reverse_encoder" else None
        hidden, attention, norms = [x], [], []
        for i, block in enumerate(self.blocks, start=1):
            if i == reverse_at:
                x = reverse_valid_frames(x, lengths)  # control only; hidden[i - 1] keeps the unreversed input
            scale = self.mhsa_scale if i >= self.cfg.mhsa_scale_from else 1.0
            x, weights, block_norms = block(x, mask, mixing=self.mixing, collect=collect, mhsa_scale=scale)
            hidden.append(x)
            attention.append(weights)
            norms.append(block_norms)
        return EncoderOutput(
            hidden=hidden,
            lengths=lengths,
            mask=mask,
            self_attention=attention if collect else None,
            block_norms=norms if collect else None,
        )
