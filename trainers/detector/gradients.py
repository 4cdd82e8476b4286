"""Per-block gradient maps (Schmitt et al., ICASSP 2025) and the paper's gradient alignment on them.

G_i[u, s, t] = ||d log p(a_s | a_<s, x) / d h_i[t]||_2 over D, for the encoder input h_0 (after the frontend)
and every block output h_i. Where a label's gradient lands tells where the encoder keeps that label's
information; the direction of G_i over the labels says whether block i's output runs forwards or backwards.

Every label needs its own backward pass. The batch is computed like this:
1. the frontend runs once per utterance (no gradient is needed below h_0);
2. each (utterance, label) pair becomes a copy of h_0, and copies are processed in chunks of at most
   `chunk`, so 50+ labels x several hundred frames fit in memory;
3. within a chunk, copy (u, s) contributes only log p(a_s) of utterance u, so one gradient of the sum gives
   every copy's maps at once (copies do not interact in eval mode). Copies are sorted by label position and
   each chunk runs the decoder only up to its last position: the decoder is causal, so that is exact.
The maps are read at the batch's own padding, the padding the attention was read at.

Shapes: U utterances, S label positions (no EOS row), T' encoder frames, L blocks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from trainers.corpus import Span
from trainers.data import Batch
from trainers.detector.alignment import gradient_scores_to_log, viterbi_align

DEFAULT_CHUNK = 64


def gradient_maps(model: torch.nn.Module, batch: Batch, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """(L+1, U, S, T') maps of every utterance of `batch`; padded labels and padded frames are zero.

    The model is read at the step it was last given (`model.set_step`). It runs in eval mode (restored
    after), so copies do not interact through dropout or batch statistics."""
    labels, label_lengths = batch.labels, batch.label_lengths
    num_utts, num_labels = labels.shape
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            h0, enc_lengths = model.encoder.embed(batch.features, batch.feature_lengths)
        frames = h0.shape[1]
        mask = torch.arange(frames, device=h0.device)[None, :] < enc_lengths[:, None]  # (U, T')
        maps = torch.zeros(len(model.encoder.blocks) + 1, num_utts, num_labels, frames, device=h0.device)
        # (label position, utterance) pairs, by position: a chunk's decoder stops at its last position.
        pairs = sorted((s, u) for u in range(num_utts) for s in range(int(label_lengths[u])))
        for start in range(0, len(pairs), chunk):
            part = torch.tensor(pairs[start : start + chunk], device=h0.device)
            positions, utts = part[:, 0], part[:, 1]
            grads = _chunk_gradients(model, h0, enc_lengths, labels, label_lengths, utts, positions)
            for i, g in enumerate(grads):
                maps[i, utts, positions] = g.float().norm(dim=-1) * mask[utts]
    finally:
        model.train(was_training)
    return maps


def _chunk_gradients(
    model: torch.nn.Module,
    h0: Tensor,
    enc_lengths: Tensor,
    labels: Tensor,
    label_lengths: Tensor,
    utts: Tensor,
    positions: Tensor,
) -> list[Tensor]:
    """Gradients of log p(a_s) of copy (u, s) w.r.t. every hidden tensor: L+1 tensors (C, T', D)."""
    # Position s predicts a_{s+1} (1-based) from [BOS, a_1..a_s]: labels up to index s suffice.
    needed = int(positions.max()) + 1
    copy_labels = labels[utts, :needed]
    copy_lengths = torch.clamp(label_lengths[utts], max=needed)
    with torch.enable_grad():
        x = h0[utts].detach().requires_grad_(True)
        enc = model.encoder.run_blocks(x, enc_lengths[utts])
        out = model.decode(enc, copy_labels, copy_lengths)
        copy = torch.arange(len(utts), device=h0.device)
        logits = out.logits[copy, positions].float()  # (C, V)
        log_prob = logits.log_softmax(-1).gather(-1, out.targets[copy, positions][:, None]).sum()
        grads = torch.autograd.grad(log_prob, enc.hidden, allow_unused=True)
    return [torch.zeros_like(h) if g is None else g for g, h in zip(grads, enc.hidden, strict=True)]


def gradient_alignment(
    maps_0: np.ndarray,
    label_lengths: np.ndarray,
    enc_lengths: np.ndarray,
    feature_lengths: np.ndarray,
    subsampling: int,
    blank_score: float,
) -> list[list[Span] | None]:
    """Viterbi alignment of each utterance's G_0 (U, S, T'); label spans in input frames, None where T' < N.

    Encoder frame t covers input frames [t * subsampling, (t + 1) * subsampling), clipped to the length.
    """
    out: list[list[Span] | None] = []
    for grads, n, length, frames in zip(maps_0, label_lengths, enc_lengths, feature_lengths, strict=True):
        try:
            spans = viterbi_align(gradient_scores_to_log(grads[:n, :length]), blank_score)
        except ValueError:
            out.append(None)
            continue
        out.append([(min(s * subsampling, frames), min(e * subsampling, frames)) for s, e in spans])
    return out
