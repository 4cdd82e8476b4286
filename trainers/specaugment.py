"""SpecAugment (Park et al., 2019): time and feature masks on (B, T, F) input features, within each
utterance's valid length. Masked values become `train.specaug_mask_value`.

Two schedules (`train.specaug`):

* `fixed`: from step `specaug_start` on, every utterance gets `specaug_time_masks` time masks of
  0..`specaug_time_width` frames and `specaug_feature_masks` feature masks of 0..`specaug_feature_width` dims.
* `paper`: the ramp of RETURNN's `rf.audio.specaugment` as the paper's recipe runs it. Three stage steps
  s0 <= s1 <= s2 (`specaug_steps`; the paper: 5k, 15k, 25k updates) switch flags f0, f1, f2 on. Off before s0;
  then each utterance of T frames gets a number of time masks drawn uniformly from
  [f1 + f2, max(T // 100, 2) * (f0 + f1 + 2 f2)], each 1..`specaug_time_width` frames (paper: 20) at distinct
  start frames, and [f1 + f2, 2 f0 + f1 + 2 f2] feature masks of 1..`specaug_feature_width` dims (paper:
  F // 5, i.e. 16 of 80). By the paper's flip (~35k updates) about a fifth of the time axis is masked.

RETURNN masks with 0. On linear features 0 is silence; on log-mel features (log10 energies, silence near -7)
it is loud, so a mask does not look like silence there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainers.config import TrainConfig
from trainers.corpus import SPECAUGMENT_SEED_STRIDE


def mask_generator(trial_seed: int, step: int) -> torch.Generator:
    """The generator of training step `step`'s masks: a function of (trial seed, step) alone, so a resumed
    trial draws the same masks."""
    return torch.Generator().manual_seed(trial_seed * SPECAUGMENT_SEED_STRIDE + step)


def spec_augment(features: Tensor, lengths: Tensor, step: int, cfg: TrainConfig, generator: torch.Generator):
    """Masked copy of (B, T, F) features at training step `step` (unchanged when the schedule is off)."""
    if cfg.specaug == "paper":
        keep = _paper_keep(features.shape, lengths, step, cfg, generator)
    elif cfg.specaug_time_masks + cfg.specaug_feature_masks and step >= cfg.specaug_start:
        keep = _fixed_keep(features.shape, lengths, cfg, generator)
    else:
        return features
    if keep is None:
        return features
    return torch.where(keep, features, torch.tensor(cfg.specaug_mask_value, dtype=features.dtype))


def _fixed_keep(shape: torch.Size, lengths: Tensor, cfg: TrainConfig, generator: torch.Generator) -> Tensor:
    """(B, T, F) bool, False where masked: a fixed number of masks per utterance (widths may be 0)."""
    batch, frames, dims = shape
    keep = torch.ones(batch, frames, dims, dtype=torch.bool)
    time_axis = torch.arange(frames)
    for _ in range(cfg.specaug_time_masks):
        width = torch.randint(0, cfg.specaug_time_width + 1, (batch,), generator=generator)
        start = (torch.rand(batch, generator=generator) * (lengths - width).clamp(min=1)).long()
        hit = (time_axis >= start[:, None]) & (time_axis < (start + width)[:, None])
        keep &= ~hit[:, :, None]
    dim_axis = torch.arange(dims)
    for _ in range(cfg.specaug_feature_masks):
        width = torch.randint(0, cfg.specaug_feature_width + 1, (batch,), generator=generator)
        start = (torch.rand(batch, generator=generator) * (dims - width).clamp(min=1)).long()
        hit = (dim_axis >= start[:, None]) & (dim_axis < (start + width)[:, None])
        keep &= ~hit[:, None, :]
    return keep


def paper_mask_counts(lengths: Tensor, step: int, steps: tuple[int, int, int]) -> tuple[Tensor, ...]:
    """The paper ramp's (B,) inclusive ranges: (time_min, time_max, feature_min, feature_max)."""
    f0, f1, f2 = (int(step >= s) for s in steps)
    per_length = torch.clamp(lengths // 100, min=2)
    time_min = torch.full_like(lengths, f1 + f2)
    time_max = torch.minimum(per_length * (f0 + f1 + 2 * f2), lengths)
    feature_min = torch.full_like(lengths, f1 + f2)
    feature_max = torch.full_like(lengths, 2 * f0 + f1 + 2 * f2)
    return time_min, time_max, feature_min, feature_max


def _masks_along(
    valid: Tensor, low: Tensor, high: Tensor, max_width: int, generator: torch.Generator
) -> Tensor:
    """(B, N) bool of masked positions along one axis: per row a count uniform in [low, high] of masks with
    distinct starts among the row's valid positions, each 1..max_width long (clipped at the row's end)."""
    rows, size = valid.shape
    low = torch.minimum(low, high)  # an utterance shorter than the fewest masks gets as many as fit
    count = low + (torch.rand(rows, generator=generator) * (high - low + 1)).long().clamp(max=high - low)
    most = int(count.max())
    if most == 0:
        return torch.zeros(rows, size, dtype=torch.bool)
    # Distinct starts: the top-k of random scores over the valid positions (as RETURNN does).
    scores = torch.rand(rows, size, generator=generator).masked_fill(~valid, -1.0)
    starts = scores.topk(min(most, size), dim=1).indices  # (B, K)
    widths = torch.randint(1, max_width + 1, starts.shape, generator=generator)
    active = torch.arange(starts.shape[1])[None, :] < count[:, None]  # (B, K)
    ends = torch.minimum(starts + widths, valid.sum(1, keepdim=True))
    axis = torch.arange(size)[None, None, :]
    hit = (axis >= starts[:, :, None]) & (axis < ends[:, :, None]) & active[:, :, None]
    return hit.any(1)


def _paper_keep(
    shape: torch.Size, lengths: Tensor, step: int, cfg: TrainConfig, generator: torch.Generator
) -> Tensor | None:
    """(B, T, F) bool, False where masked, or None before the ramp starts."""
    if step < cfg.specaug_steps[0]:
        return None
    batch, frames, dims = shape
    time_min, time_max, feature_min, feature_max = paper_mask_counts(lengths, step, cfg.specaug_steps)
    time_valid = torch.arange(frames)[None, :] < lengths[:, None]
    time_hit = _masks_along(time_valid, time_min, time_max, cfg.specaug_time_width, generator)
    dim_valid = torch.ones(batch, dims, dtype=torch.bool)
    dim_hit = _masks_along(dim_valid, feature_min, feature_max, cfg.specaug_feature_width, generator)
    return ~(time_hit[:, :, None] | dim_hit[:, None, :])
