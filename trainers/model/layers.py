"""Small tensor helpers shared by the encoder and the decoders: masks, dropout, positions, masked softmax.

Shapes: B batch, T frames, D width, H heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, max_len) bool, True = valid."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class Dropout(nn.Module):
    """Dropout on (B, T, ...) activations; with `broadcast`, one mask per utterance and feature, shared over
    the T frames (RETURNN's rf_dropout_broadcast, on in the paper's runs): a dropped feature is dropped for
    the whole utterance, so dropout cannot mark single frames. Without it, exactly nn.Dropout (same draws).
    """

    def __init__(self, p: float, *, broadcast: bool = False):
        super().__init__()
        self.p, self.broadcast = p, broadcast

    def forward(self, x: Tensor) -> Tensor:
        if not self.broadcast or not self.training or self.p == 0.0:
            return F.dropout(x, self.p, self.training)
        keep = x.new_empty(x.shape[0], 1, *x.shape[2:]).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, broadcast={self.broadcast}"


def sinusoids(positions: Tensor, dim: int) -> Tensor:
    """(N,) positions (any sign) -> (N, dim) sinusoidal encodings, sin and cos halves (Vaswani et al.)."""
    half = (dim + 1) // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device) / half)
    angles = positions.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[:, :dim]


def rotary(x: Tensor) -> Tensor:
    """RoPE: rotate (B, H, T, d) feature pairs (i, i + d/2) by angles proportional to the frame index."""
    half = x.shape[-1] // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / half)
    angles = torch.arange(x.shape[-2], device=x.device).float()[:, None] * freqs[None, :]  # (T, d/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def masked_softmax(scores: Tensor, key_mask: Tensor) -> Tensor:
    """Softmax over the last axis restricted to valid keys; padded keys get exactly 0.

    A large negative fill rather than -inf keeps a row without any valid key finite.
    """
    scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1) * key_mask


def masked_mean_norm(x: Tensor, mask: Tensor) -> float:
    """Mean over valid frames (pooled over the batch) of the L2 norm over D of x (B, T, D)."""
    norms = x.detach().float().norm(dim=-1)
    return float((norms * mask).sum() / mask.sum().clamp_min(1))
