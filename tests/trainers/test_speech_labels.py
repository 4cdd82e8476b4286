"""Labels on speech-like attention: labels that share their word's frames, a start-edge sink, and a reason for
every `undecided`. The attention maps are constructed; they go through the detector's own readings
(`read_attention`, `attention_figures`) and `judge`, as an evaluation's would."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from trainers.config import DetectorConfig
from trainers.detector.evaluate import attention_figures, read_attention
from trainers.detector.plots import plot_attention
from trainers.detector.readings import attention_readings, outside_sink, word_overlap
from trainers.detector.verdict import (
    LABELS,
    REASON_CODES,
    UNDECIDED_REASONS,
    Evaluation,
    judge,
    verdict,
)
from trainers.outcome import TrialCost, TrialOutcome

# min_accuracy 0.5, min_peak 0.2, min_focus 8, max_word_overlap 0.6, sink_lift 3, initial_frames 3
CFG = DetectorConfig()
FORWARDS, ENCODER_BACKWARDS = [0.9, 0.9, 0.9], [0.9, 0.8, -0.9]  # G_0 .. G_2
SINK = 3  # CFG.initial_frames


def word_rows(frames: int, words: int, pieces: list[int], *, order=None, blur=1.5, spread=0.1):
    """(S, T') rows of a word-level alignment and (S,) word index: word w sits on 70 % of its share of the
    frames (the rest: pauses), edges blurred by `blur` frames, `spread` of each row's mass spread evenly;
    every piece of a word attends the whole word. `order`: the slot each word is spoken in (default: in
    order, a diagonal)."""
    order = range(words) if order is None else order
    slot = frames / words
    rows, word_index = [], []
    for w, position in enumerate(order):
        start = int(round(position * slot + 0.15 * slot))
        row = np.zeros(frames)
        row[start : max(start + 1, int(round(start + 0.7 * slot)))] = 1.0
        row = gaussian_filter1d(row, blur, mode="constant") if blur else row
        row = row / row.sum() * (1 - spread) + spread / frames
        rows += [row] * pieces[w]
        word_index += [w] * pieces[w]
    return np.array(rows), np.array(word_index)


def pieces_per_word(words: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(1, 5, size=words).tolist()  # 1-4 BPE pieces per word


def flat_rows(frames: int, labels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(frames, 50.0), size=labels)  # peak ~ 1.4 / T'


def sink_rows(frames: int, labels: int, *, low=0.1, high=0.6, seed: int = 0) -> np.ndarray:
    """A start-edge sink growing over the labels: label s puts low..high of its mass on the first 3 frames,
    the rest (nearly) flat."""
    rows = flat_rows(frames, labels, seed)
    for s, mass in enumerate(np.linspace(low, high, labels)):
        rows[s, :SINK] = mass / SINK
        rows[s, SINK:] *= (1 - mass) / rows[s, SINK:].sum()
    return rows


def batch(utterances: list[tuple[np.ndarray, np.ndarray | None]]):
    """Pad (S, T') rows to (B, S + 1, T'_max) with an EOS row that points anywhere (it is not a label)."""
    labels = max(len(rows) for rows, _ in utterances) + 1
    frames = max(rows.shape[1] for rows, _ in utterances)
    attention = np.zeros((len(utterances), labels, frames))
    for b, (rows, _) in enumerate(utterances):
        attention[b, : len(rows), : rows.shape[1]] = rows
        attention[b, len(rows), rows.shape[1] - 1] = 1.0  # EOS
    label_lengths = np.array([len(rows) for rows, _ in utterances])
    enc_lengths = np.array([rows.shape[1] for rows, _ in utterances])
    return attention, label_lengths, enc_lengths, [words for _, words in utterances]


def evaluation_of(utterances, blocks=FORWARDS, accuracy=0.9, step=100) -> Evaluation:
    attention, label_lengths, enc_lengths, words = batch(utterances)
    per_utterance = read_attention(attention, label_lengths, enc_lengths, words, CFG)
    e = Evaluation(
        step=step,
        loss=1.0,
        accuracy=accuracy,
        block_directions=blocks,
        **attention_figures(per_utterance, CFG),
    )
    e.label, e.reason = judge(e, CFG)
    return e


def word_diagonals(frames: int, words: int, utterances: int = 4, **kw):
    return [word_rows(frames + u, words, pieces_per_word(words, seed=u), **kw) for u in range(utterances)]


# -- labels that share their word's frames ----------------------------------------------------------------
@pytest.mark.parametrize(("frames", "words"), [(66, 5), (200, 25)])
def test_word_level_diagonal_is_normal(frames, words):
    e = evaluation_of(word_diagonals(frames, words))
    assert e.word_overlap < 0.2
    assert e.attention_direction > 0.95 and e.cross_initial_lift < CFG.sink_lift
    assert (e.label, e.reason) == ("normal", None)
    reversed_encoder = evaluation_of(
        [(rows[::-1], words[::-1]) for rows, words in word_diagonals(frames, words)], ENCODER_BACKWARDS
    )
    assert (reversed_encoder.label, reversed_encoder.reason) == ("reversed", None)


def test_word_level_diagonal_fails_the_peak_and_focus_tests_pooled_or_not():
    # What the word overlap is for: at T' = 66 each piece spreads over its word (~9 frames), so neither the
    # absolute peak nor the focus test passes, and pooling a word's pieces first changes nothing.
    utterances = word_diagonals(66, 5)
    attention, label_lengths, enc_lengths, words = batch(utterances)
    readings = attention_readings(attention, label_lengths, enc_lengths)
    assert readings["peak"].max() < CFG.min_peak and readings["focus"].max() < CFG.min_focus
    pooled = [np.stack([rows[w == i].mean(0) for i in np.unique(w)]) for rows, w in utterances]
    pooled_focus = np.array([p.max(-1).mean() * p.shape[1] for p in pooled])
    assert pooled_focus.max() < CFG.min_focus
    np.testing.assert_allclose(pooled_focus, readings["focus"], rtol=0.01)
    blurred = evaluation_of(word_diagonals(66, 5, blur=3.0, spread=0.2))
    assert blurred.attention_focus < 6 and blurred.word_overlap < CFG.max_word_overlap
    assert blurred.label == "normal"


@pytest.mark.parametrize("frames", [33, 66, 200])
def test_flat_attention_stays_undecided_for_focus(frames):
    utterances = [(flat_rows(frames, 10, seed=u), np.repeat(np.arange(5), 2)) for u in range(4)]
    e = evaluation_of(utterances)
    assert e.word_overlap > 0.9
    assert (e.label, e.reason) == ("undecided", "focus")
    synthetic = evaluation_of([(rows, None) for rows, _ in utterances])  # every label its own word
    assert math.isnan(synthetic.word_overlap) and synthetic.reason == "focus"


@pytest.mark.parametrize(("frames", "words", "width"), [(33, 4, 1 / 2), (66, 5, 1 / 2), (200, 25, 1 / 3)])
def test_broad_attention_sliding_along_does_not_point(frames, words, width):
    # A bump `width` of the utterance wide (at half height) moving forwards: monotonic, peak 2-3 x uniform,
    # but consecutive words share most of their attention.
    t = np.arange(frames)
    centres = np.linspace(0.15 * frames, 0.85 * frames, words)
    rows = np.exp(-0.5 * ((t[None, :] - centres[:, None]) / (width * frames / 2.355)) ** 2)
    rows = np.repeat(rows / rows.sum(-1, keepdims=True), 2, axis=0)
    e = evaluation_of([(rows, np.repeat(np.arange(words), 2))] * 3)
    assert e.attention_direction > 0.9 and e.attention_focus < 3.5
    assert e.word_overlap > CFG.max_word_overlap
    assert (e.label, e.reason) == ("undecided", "focus")


def test_word_overlap_pools_pieces_and_skips_single_words():
    rows = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0.5, 0.5, 0]])
    attention = rows[None]
    # Words {0, 1} and {2}: pooled [.5, .5, 0, 0] against [0, .5, .5, 0] share 0.5.
    overlaps = word_overlap(attention, np.array([3]), np.array([4]), [np.array([0, 0, 1])])
    np.testing.assert_allclose(overlaps, [0.5])
    assert np.isnan(word_overlap(attention, np.array([3]), np.array([4]), [np.array([0, 0, 0])])).all()
    assert np.isnan(word_overlap(attention, np.array([3]), np.array([4]), [None])).all()


# -- the start-edge sink -----------------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [33, 66, 200])
@pytest.mark.parametrize("bpe", [True, False])
def test_growing_sink_is_never_reversed_and_says_sink(frames, bpe):
    words = np.repeat(np.arange(6), 2) if bpe else None
    utterances = [(sink_rows(frames, 12, seed=u), words) for u in range(4)]
    for blocks in (ENCODER_BACKWARDS, FORWARDS):  # even with an encoder that reads backwards
        e = evaluation_of(utterances, blocks)
        assert e.attention_direction <= -CFG.min_direction  # the whole attention reads backwards...
        assert abs(e.outside_sink_direction) < CFG.min_direction  # ...outside the sink it reads nothing
        assert e.cross_initial_lift >= CFG.sink_lift
        assert (e.label, e.reason) == ("undecided", "sink")
        assert e.reversal_score == pytest.approx(-(e.outside_sink_direction + blocks[-1]) / 2)


def test_sink_next_to_an_alignment_is_decided_on_the_alignment():
    utterances = []
    for rows, words in word_diagonals(66, 5):
        rows = rows * 0.6
        rows[:, :SINK] += 0.4 / SINK  # 40 % of every row on the first three frames
        utterances.append((rows, words))
    e = evaluation_of(utterances)
    assert e.cross_initial_lift > 5 and e.outside_sink_direction > 0.9
    assert (e.label, e.reason) == ("normal", None)


def test_outside_sink_takes_out_only_sinks():
    attention, _, enc_lengths, _ = batch([(sink_rows(20, 4), None), (flat_rows(12, 4), None)])
    out = outside_sink(attention, enc_lengths, SINK, np.array([True, False]))
    assert np.array_equal(out[1], attention[1])  # no sink: bit for bit
    assert (out[0, :, :SINK] == 0).all()
    np.testing.assert_allclose(out[0, :, SINK:20].sum(-1), 1.0)
    np.testing.assert_allclose(out[0, 0, SINK:], attention[0, 0, SINK:] / attention[0, 0, SINK:].sum())


def test_without_sink_or_words_the_label_reads_the_whole_attention():
    # The synthetic corpus: every label its own word and no sink, so what `judge` reads is the whole
    # attention's figures, the same numbers: its decisions are the ones made before the sink and words.
    rng = np.random.default_rng(3)
    utterances = [(rng.dirichlet(np.full(15 + u, 0.3), size=5), None) for u in range(6)]
    e = evaluation_of(utterances)
    assert e.cross_initial_lift < CFG.sink_lift and math.isnan(e.word_overlap)
    for name in ("direction", "peak", "focus", "backward_fraction"):
        assert getattr(e, f"outside_sink_{name}") == getattr(e, f"attention_{name}")


# -- a reason for every undecided -------------------------------------------------------------------------
def test_every_reason_comes_from_a_hand_made_case():
    diagonal = word_diagonals(66, 5)
    scrambled = [word_rows(66, 5, [2] * 5, order=[2, 4, 0, 3, 1]) for _ in range(3)]
    bpe = np.repeat(np.arange(5), 2)
    cases = {
        "accuracy": evaluation_of(diagonal, accuracy=0.3),
        "focus": evaluation_of([(flat_rows(66, 10, seed=u), bpe) for u in range(3)]),
        "sink": evaluation_of([(sink_rows(66, 10, seed=u), bpe) for u in range(3)], ENCODER_BACKWARDS),
        "direction": evaluation_of(scrambled),
        "disagree": evaluation_of(diagonal, ENCODER_BACKWARDS),
    }
    for reason, e in cases.items():
        assert (e.label, e.reason) == ("undecided", reason), reason
        assert e.metrics()["reason_code"] == REASON_CODES[reason]
    normal = evaluation_of(diagonal)
    assert normal.reason is None and normal.metrics()["reason_code"] == 0.0
    # `unconfirmed`: the last evaluation is decided, the one before it is not the same label.
    history = [
        evaluation_of(diagonal, step=100, accuracy=0.3),
        evaluation_of(diagonal, step=200),
    ]
    result = verdict(history, CFG)
    assert (result["label"], result["reason"]) == ("undecided", "unconfirmed")
    assert set(cases) | {"unconfirmed"} == set(UNDECIDED_REASONS)


def test_verdict_carries_the_reason_to_the_outcome():
    flat = [(flat_rows(66, 10, seed=u), np.repeat(np.arange(5), 2)) for u in range(3)]
    history = [evaluation_of(flat, step=100), evaluation_of(flat, step=200)]
    result = verdict(history, CFG)
    assert (result["label"], result["reason"]) == ("undecided", "focus")
    outcome = TrialOutcome.from_verdict(
        result, kind="natural", steps_done=200, early_stopped=False, cost=TrialCost()
    )
    assert outcome.reason == "focus" and not outcome.undeclared_figures
    assert outcome.mlflow_tags()["reason"] == "focus"
    assert outcome.mlflow_metrics()["verdict/reason_code"] == REASON_CODES["focus"]
    decided = [evaluation_of(word_diagonals(66, 5), step=s) for s in (100, 200)]
    result = verdict(decided, CFG)
    assert (result["label"], result["reason"]) == ("normal", None)
    assert result["word_overlap"] < 0.2 and result["outside_sink_direction"] > 0.9
    assert set(LABELS) >= {result["label"]}


def test_attention_plot_marks_a_taken_out_sink(tmp_path):
    attention, label_lengths, enc_lengths, words = batch([(sink_rows(33, 6), None)])
    per_utterance = read_attention(attention, label_lengths, enc_lengths, words, CFG)
    assert per_utterance["sink_frames"].tolist() == [SINK]
    arrays = {
        "attention": attention[:, :6].astype(np.float32),
        "attention_directions": per_utterance["direction"],
        "outside_sink_directions": per_utterance["outside_sink_direction"],
        "sink_frames": per_utterance["sink_frames"],
        "label_lengths": label_lengths,
        "enc_lengths": enc_lengths,
        "spans": np.full((1, 6, 2), -1),
        "subsampling": np.asarray(6),
    }
    plot_attention(tmp_path / "sink.png", arrays)
    assert (tmp_path / "sink.png").read_bytes()[:4] == b"\x89PNG"


def test_a_checkpointed_evaluation_from_before_the_sink_reads_its_whole_attention():
    # A resumed trial unpickles its history; evaluations written before these fields existed get them.
    e = evaluation_of(word_diagonals(66, 5))
    new = {"reason", "word_overlap"} | {name for name in vars(e) if name.startswith("outside_sink_")}
    old = Evaluation.__new__(Evaluation)
    old.__setstate__({name: value for name, value in vars(e).items() if name not in new})
    assert old.outside_sink_direction == e.attention_direction and old.reason is None
    assert math.isnan(old.word_overlap) and verdict([old, old], CFG)["label"] == "normal"
