"""Label-frame alignment from gradients (Schmitt et al., ICASSP 2025, following Zeyer's recipe).

The gradient map G[s, t] = ||d log p(a_s | a_<s, x) / d h[t]||_2 says how much frame t matters for label s.
It is turned into log-scores (log, subtract the maximum, log-softmax over time: the "sm" option) and aligned
with a Viterbi pass over a CTC-like topology: 2S+1 states blank, a_1, blank, a_2, ..., a_S, blank. Every label
holds at least one frame, the blank between two labels may be skipped, the path starts in one of the first two
states and ends in one of the last two. Blank frames score a constant `blank_score` (the paper: -4 at 60 ms,
-6 at 10 ms).

The time-stamp error (TSE) compares spans label by label: boundaries = mean (|d start| + |d end|) / 2,
positions = mean |d centre|, in whatever unit the spans are given.

Shapes: S labels, T frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import log_softmax

from trainers.corpus import Span


def gradient_scores_to_log(maps: np.ndarray) -> np.ndarray:
    """(S, T) gradient L2 norms -> (S, T) log-scores: log, minus the global maximum, log-softmax over time.

    Zero gradients are floored at the smallest positive double so that they score very low instead of -inf
    (an all-zero row then becomes uniform rather than NaN). The max subtraction does not change the result of
    the softmax; it is kept so the steps match the recipe's "raw" variant one for one.
    """
    scores = np.log(np.maximum(np.asarray(maps, dtype=np.float64), np.finfo(np.float64).tiny))
    scores = scores - scores.max()
    return log_softmax(scores, axis=1)


def _emissions(scores: np.ndarray, blank_score: float) -> np.ndarray:
    """(S, T) label log-scores -> (2S+1, T): even states blank, odd state 2s+1 label s."""
    num_labels, frames = scores.shape
    emissions = np.full((2 * num_labels + 1, frames), blank_score, dtype=np.float64)
    emissions[1::2] = scores
    return emissions


def viterbi_align(scores: np.ndarray, blank_score: float) -> list[Span]:
    """Best path of (S, T) log-scores through blank/label states; returns each label's [start, end) frames.

    The recursion runs frame by frame, vectorised over the 2S+1 states: a state is entered from itself, from
    its predecessor, or (label states after the first) from the previous label, skipping the blank in between.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (S, T), got shape {scores.shape}")
    num_labels, frames = scores.shape
    if num_labels == 0:
        return []
    if frames < num_labels:
        raise ValueError(f"cannot align {num_labels} labels to {frames} frames: every label needs a frame")
    emissions = _emissions(scores, blank_score)
    states = emissions.shape[0]
    # The blank-skip enters label state k from label state k - 2; for k = 1 there is no previous label.
    skip_allowed = np.zeros(states, dtype=bool)
    skip_allowed[3::2] = True

    best = np.full(states, -np.inf)
    best[:2] = emissions[:2, 0]
    backpointer = np.zeros((frames, states), dtype=np.int8)  # how many states back the best entry came from
    for t in range(1, frames):
        candidates = np.full((3, states), -np.inf)
        candidates[0] = best
        candidates[1, 1:] = best[:-1]
        candidates[2, 2:] = np.where(skip_allowed[2:], best[:-2], -np.inf)
        backpointer[t] = candidates.argmax(axis=0)  # ties prefer staying
        best = candidates[backpointer[t], np.arange(states)] + emissions[:, t]

    state = states - 1 if best[-1] >= best[-2] else states - 2
    path = np.empty(frames, dtype=np.int64)
    for t in range(frames - 1, -1, -1):
        path[t] = state
        state -= int(backpointer[t, state])  # int: an int8 state would overflow past 127 (64+ labels)
    # The path is non-decreasing, so each label state occupies one contiguous run of frames.
    label_states = 2 * np.arange(num_labels) + 1
    starts = np.searchsorted(path, label_states, side="left")
    ends = np.searchsorted(path, label_states, side="right")
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def time_stamp_error(predicted: Sequence[Span], reference: Sequence[Span]) -> tuple[float, float]:
    """(boundary_error, position_error) of two equally long span lists, in the spans' own unit.

    boundary = mean over labels of (|d start| + |d end|) / 2; position = mean over labels of |d centre|.
    """
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predicted spans for {len(reference)} reference spans")
    if not predicted:
        return float("nan"), float("nan")
    p = np.asarray(predicted, dtype=np.float64).reshape(-1, 2)
    r = np.asarray(reference, dtype=np.float64).reshape(-1, 2)
    boundary = np.abs(p - r).mean(axis=1).mean()
    position = np.abs(p.mean(axis=1) - r.mean(axis=1)).mean()
    return float(boundary), float(position)
