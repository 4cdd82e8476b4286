"""Gradient alignment: Viterbi over the blank/label topology, the log-score transform, and the TSE."""

from __future__ import annotations

import numpy as np
import pytest

from trainers.detector.alignment import gradient_scores_to_log, time_stamp_error, viterbi_align

HIGH, LOW, BLANK = 0.0, -10.0, -4.0


def scores_from_frames(frames_per_label: list[list[int]], num_frames: int) -> np.ndarray:
    """(S, T) log-scores: HIGH where a label 'is', LOW elsewhere."""
    scores = np.full((len(frames_per_label), num_frames), LOW)
    for s, frames in enumerate(frames_per_label):
        scores[s, frames] = HIGH
    return scores


def test_viterbi_follows_a_clear_diagonal_with_blanks_between():
    # Frames 0, 3, 6 and 8 suit no label: a blank (-4) beats any label there (-10).
    scores = scores_from_frames([[1, 2], [4, 5], [7]], num_frames=9)
    assert viterbi_align(scores, BLANK) == [(1, 3), (4, 6), (7, 8)]


def test_viterbi_skips_the_blank_between_adjacent_labels():
    # Labels touch (frames 0-1 and 2-3): a blank in between would cost -4 against 0, so it is skipped.
    scores = scores_from_frames([[0, 1], [2, 3]], num_frames=4)
    assert viterbi_align(scores, BLANK) == [(0, 2), (2, 4)]


def test_viterbi_keeps_each_label_contiguous():
    # One label, scores (-1, -5, -1), blank -4. By hand: [0,3) = -7; [0,1)+2 blanks = -9; [2,3) = -9;
    # [0,2)+blank = -10. Frames 0 and 2 alone are not a path: a label holds one contiguous run.
    assert viterbi_align(np.array([[-1.0, -5.0, -1.0]]), BLANK) == [(0, 3)]
    # With blank -2: [0,1) = -1-2-2 = -5 beats [2,3) = -2-2-1.5 = -5.5 and [0,3) = -7.5.
    assert viterbi_align(np.array([[-1.0, -5.0, -1.5]]), -2.0) == [(0, 1)]


def test_viterbi_gives_every_label_a_frame_when_frames_are_scarce():
    # T == S: each label gets exactly one frame even though label 1's scores favour frame 0.
    scores = np.array([[0.0, -1.0, -9.0], [0.0, -9.0, -9.0], [-9.0, -9.0, 0.0]])
    assert viterbi_align(scores, BLANK) == [(0, 1), (1, 2), (2, 3)]


def test_viterbi_aligns_more_labels_than_an_int8_counts():
    # 100 labels have 201 states: a long utterance's BPE pieces (study 7 at 10-15 s has 60-90).
    scores = scores_from_frames([[2 * s] for s in range(100)], num_frames=200)
    assert viterbi_align(scores, BLANK) == [(2 * s, 2 * s + 1) for s in range(100)]


def test_viterbi_rejects_fewer_frames_than_labels():
    with pytest.raises(ValueError, match="cannot align 3 labels to 2 frames"):
        viterbi_align(np.zeros((3, 2)), BLANK)


def test_gradient_scores_to_log_is_a_log_softmax_over_time():
    maps = np.array([[1.0, np.e, 1.0], [np.e**2, 1.0, 1.0], [0.0, 0.0, 0.0]])
    scores = gradient_scores_to_log(maps)
    expected_first = np.array([0.0, 1.0, 0.0]) - np.log(2 + np.e)
    np.testing.assert_allclose(scores[0], expected_first)
    np.testing.assert_allclose(scores[1], np.array([2.0, 0.0, 0.0]) - np.log(np.e**2 + 2))
    # A row without gradient is finite and uniform, not NaN.
    np.testing.assert_allclose(scores[2], np.full(3, -np.log(3)))
    np.testing.assert_allclose(np.exp(scores).sum(1), 1.0)


def test_time_stamp_error_by_hand():
    predicted = [(0, 10), (10, 20)]
    reference = [(2, 8), (10, 26)]
    # Boundaries: ((2 + 2) / 2 + (0 + 6) / 2) / 2 = 2.5. Centres: 5 vs 5, 15 vs 18 -> (0 + 3) / 2 = 1.5.
    assert time_stamp_error(predicted, reference) == pytest.approx((2.5, 1.5))
    assert time_stamp_error(reference, reference) == (0.0, 0.0)


def test_time_stamp_error_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="2 predicted spans for 1 reference"):
        time_stamp_error([(0, 1), (1, 2)], [(0, 2)])
