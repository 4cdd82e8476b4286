"""The convolutional frontend: log-mel-like features (B, T, F) -> encoder frames (B, T', D), subsampled in
time by 4 or 6 (the paper's).

Shapes: B batch, T input frames, T' encoder frames, F features, C channels, D d_model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainers.config import ModelConfig
from trainers.model.layers import Dropout, lengths_to_mask

FRONTEND_TIME_STRIDES: dict[int, tuple[int, int, int]] = {4: (1, 2, 2), 6: (1, 3, 2)}

# The first convolution's output holds C x T x F values per utterance, at full time resolution: 4.6 MB for a
# 4.5 s utterance of 80 features, 74 MB for a batch of 16, far beyond a CPU's caches, so every pass over it
# (the pooling, the ReLU and their gradients) runs at memory speed. On CPU the convolutions therefore run a
# few utterances at a time, each chunk's first output at most this many values (8 MiB of float32), and its
# forward and backward stay in cache: the same function, a speech step ~1.5x faster (benchmarks/speech.py).
# Batches of short utterances (the synthetic corpus, the tests' tiny models) fit in one chunk.
CPU_CHUNK_VALUES = 2**21


def subsampled_lengths(lengths: Tensor, subsampling: int) -> Tensor:
    """Valid frames after the frontend: a 3x3 conv with padding 1 and time stride s maps L to ceil(L / s)."""
    for stride in FRONTEND_TIME_STRIDES[subsampling]:
        lengths = (lengths + stride - 1) // stride
    return lengths


def pool_feature_pairs(x: Tensor) -> Tensor:
    """Max-pool (1, 2) over the last (feature) axis of (B, C, T, F), dropping an odd last column.

    Equal to nn.MaxPool2d((1, 2)) and, placed before the ReLU (max and ReLU commute), bit for bit the same
    forward and gradient as pooling after it; at the frontend's full time resolution it is ~2x faster.
    """
    pairs = x.shape[-1] // 2
    return x[..., : 2 * pairs].unflatten(-1, (pairs, 2)).max(-1).values


class ConvFrontend(nn.Module):
    """Three 3x3 conv2d layers over (time, feature) with ReLU, then a linear projection to D.

    Time strides (1, 2, 2) give 4x subsampling, (1, 3, 2) the paper's 6x; max-pool by 2 on the feature axis
    after conv1. With `pad_mode: zero`, padded frames are zeroed before every convolution so they cannot leak
    into valid ones. On CPU the convolutions run by chunks of utterances (CPU_CHUNK_VALUES).
    """

    def __init__(self, cfg: ModelConfig, *, feature_dim: int):
        super().__init__()
        channels = cfg.frontend_channels
        self.strides = FRONTEND_TIME_STRIDES[cfg.subsampling]
        self.convs = nn.ModuleList(
            nn.Conv2d(1 if i == 0 else channels, channels, 3, stride=(s, 1), padding=1)
            for i, s in enumerate(self.strides)
        )
        self.proj = nn.Linear(channels * (feature_dim // 2), cfg.d_model, bias=False)
        self.dropout = Dropout(cfg.dropout, broadcast=cfg.dropout_broadcast)
        self.zero_pad = cfg.pad_mode == "zero"
        self.channels, self.subsampling = channels, cfg.subsampling
        self.chunk_values: int | None = CPU_CHUNK_VALUES  # None: the whole batch at once

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """features (B, T, F), lengths (B,) -> (B, T', D), (B,) subsampled lengths."""
        size = self.chunk_size(features)
        if size >= len(features):
            x = self.convolve(features, lengths)
        else:
            chunks = zip(features.split(size), lengths.split(size), strict=True)
            x = torch.cat([self.convolve(f, n) for f, n in chunks])
        return self.dropout(self.proj(x)), subsampled_lengths(lengths, self.subsampling)

    def chunk_size(self, features: Tensor) -> int:
        """Utterances per chunk of the convolutions: the whole batch on GPU or with `chunk_values` None."""
        if self.chunk_values is None or features.device.type != "cpu":
            return len(features)
        return max(1, self.chunk_values // (self.channels * features.shape[1] * features.shape[2]))

    def convolve(self, features: Tensor, lengths: Tensor) -> Tensor:
        """The convolutions: features (B, T, F), lengths (B,) -> (B, T', C * F'). Each utterance's output
        depends on its own features and length only, so any split of the batch gives the same values."""
        x = features.unsqueeze(1)  # (B, 1, T, F)
        for i, (conv, stride) in enumerate(zip(self.convs, self.strides, strict=True)):
            if self.zero_pad:
                x = x * lengths_to_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
            x = conv(x)
            if i == 0:
                x = pool_feature_pairs(x)
            x = torch.relu(x)
            lengths = (lengths + stride - 1) // stride
        return x.permute(0, 2, 1, 3).flatten(2)  # (B, T', C * F')
