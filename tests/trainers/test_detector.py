"""The flip detector on constructed signals (directions, flip block, labels, verdicts) and a tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from tests.conftest import FEATURES, TINY_MODEL, VOCAB
from trainers.config import DetectorConfig, build_config
from trainers.data import Batch
from trainers.detector.evaluate import evaluate
from trainers.detector.gradients import gradient_alignment, gradient_maps
from trainers.detector.plots import plot_attention, plot_gradients
from trainers.detector.readings import (
    attention_argmax,
    attention_readings,
    block_directions,
    cross_initial_mass,
    dominance_ratios,
    flip_block,
    masked_spearman,
    miss_rate,
    self_attention_directions,
    self_initial_links,
    spearman_direction,
    word_spans,
)
from trainers.detector.verdict import Evaluation, classify, should_stop, time_to_flip, transient, verdict

# min_accuracy 0.5, min_peak 0.2, min_focus 8, min_direction 0.5, confirm 2, patience 3
CFG = DetectorConfig()


# -- Spearman and attention direction --------------------------------------------------------------------
def test_spearman_direction_signs_and_constant():
    assert spearman_direction(np.array([0.5, 2.0, 7.0])) == pytest.approx(1.0)
    assert spearman_direction(np.array([7.0, 2.0, 0.5])) == pytest.approx(-1.0)
    assert spearman_direction(np.array([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert spearman_direction(np.full(5, 3.0)) == 0.0
    assert spearman_direction(np.array([4.0])) == 0.0


def test_masked_spearman_matches_scipy_with_ties_and_padding():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5, size=(6, 9)).astype(float)  # many ties
    counts = np.array([9, 8, 5, 3, 7, 2])
    values[np.arange(9)[None, :] >= counts[:, None]] = 99.0  # padding must not count
    expected = [spearmanr(np.arange(n), v[:n]).statistic for v, n in zip(values, counts, strict=True)]
    expected = np.nan_to_num(expected)  # scipy: NaN for constant input; ours: 0
    np.testing.assert_allclose(masked_spearman(values, counts), expected, atol=1e-12)


def one_hot_rows(frames: list[int], num_frames: int) -> np.ndarray:
    rows = np.zeros((len(frames), num_frames))
    rows[np.arange(len(frames)), frames] = 1.0
    return rows


def test_attention_readings_diagonal_antidiagonal_uniform():
    t = 8
    attention = np.zeros((3, 4, t))
    # Three labels then EOS; the EOS row sits where it would break the direction if it were counted.
    attention[0] = one_hot_rows([1, 3, 5, 0], t)
    attention[1] = one_hot_rows([6, 4, 2, 7], t)
    attention[2, :3, :6] = 1 / 6  # two labels + EOS, uniform over 6 valid frames
    readings = attention_readings(attention, np.array([3, 3, 2]), np.array([8, 8, 6]))
    np.testing.assert_allclose(readings["direction"], [1.0, -1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(readings["peak"], [1.0, 1.0, 1 / 6])
    np.testing.assert_allclose(readings["focus"], [8.0, 8.0, 1.0])  # peak x T': uniform attention reads 1


def test_initial_frame_mass_and_self_attention_links():
    t = 10
    attention = np.zeros((2, 3, t))
    attention[0, :, 0] = 1.0  # every label on frame 0: mass 1 on the first 3 frames, lift 10 / 3
    attention[1, :, :] = 1 / t  # uniform: mass 3/10, lift 1
    mass, lift = cross_initial_mass(attention, np.array([3, 3]), np.array([t, t]), k=3)
    np.testing.assert_allclose(mass, [1.0, 0.3])
    np.testing.assert_allclose(lift, [10 / 3, 1.0])
    local = np.broadcast_to(np.eye(t), (1, 2, t, t))  # each frame reads itself
    mirror = np.broadcast_to(np.eye(t)[::-1], (1, 2, t, t))  # frame i reads frame T'-1-i
    even = np.full((1, 2, t + 2, t + 2), 1 / t)  # every frame reads the utterance alike; 2 frames padding
    even[..., t:] = 0.0
    links = self_initial_links(np.concatenate([local, mirror, even[..., :t, :t]]), np.array([t, t, t]), k=3)
    np.testing.assert_allclose(links.reach, [0.0, 1.0, 0.5])  # the far half: only mirrored, or half of even
    np.testing.assert_allclose(links.pull, [0.0, (3 / 7) / (3 / 10), 1.0])  # mirrored: 3 of the 7 others
    np.testing.assert_allclose(links.entropy, [0.0, 0.0, 1.0], atol=1e-12)  # spread over all: only even
    shorter = self_initial_links(even, np.array([t]), k=3)  # padded keys carry no weight and do not count
    np.testing.assert_allclose([shorter.reach, shorter.pull, shorter.entropy], [[0.5], [1.0], [1.0]])


def test_attention_argmax_maps_reversed_frames_back():
    attention = np.stack([one_hot_rows([6, 4, 2], 8)])
    assert attention_argmax(attention, np.array([3]), np.array([8]), reverse=False)[0].tolist() == [6, 4, 2]
    assert attention_argmax(attention, np.array([3]), np.array([8]), reverse=True)[0].tolist() == [1, 3, 5]


# -- gradient-map directions and the flip block ----------------------------------------------------------
def bump_map(num_labels: int, length: int, padded: tuple[int, int], forwards: bool) -> np.ndarray:
    """(S_pad, T_pad) Gaussian bumps on the diagonal (or anti-diagonal) of the valid block; garbage in the
    padded frames (an anti-diagonal) checks that padding is ignored."""
    rows, frames = padded
    centres = np.linspace(1, length - 2, num_labels)
    if not forwards:
        centres = centres[::-1]
    grid = np.zeros((rows, frames))
    t = np.arange(length)
    grid[:num_labels, :length] = np.exp(-0.5 * (t[None, :] - centres[:, None]) ** 2)
    grid[:num_labels, length:] = 50.0 * np.arange(num_labels, 0, -1)[:, None]
    return grid


def stacked_maps(forwards: list[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L+1, U=2, S=4, T'=12) maps, one bool per block; utterances with (4 labels, 12 frames), (3, 9)."""
    label_lengths, enc_lengths = np.array([4, 3]), np.array([12, 9])
    maps = np.stack(
        [
            np.stack([bump_map(n, t, (4, 12), f) for n, t in zip(label_lengths, enc_lengths, strict=True)])
            for f in forwards
        ]
    )
    return maps, label_lengths, enc_lengths


def test_block_directions_all_forwards_has_no_flip():
    maps, labels, frames = stacked_maps([True] * 5)
    directions = block_directions(maps, labels, frames)
    np.testing.assert_allclose(directions, np.ones(5))
    assert flip_block(directions, 0.5) is None


def test_block_directions_find_the_flipping_block():
    maps, labels, frames = stacked_maps([True, True, True, False, False])
    directions = block_directions(torch.from_numpy(maps), torch.from_numpy(labels), torch.from_numpy(frames))
    np.testing.assert_allclose(directions, [1, 1, 1, -1, -1])
    assert flip_block(directions, 0.5) == 3


def test_backwards_encoder_input_is_not_a_flip():
    # G_0 backwards too: the input itself runs backwards, no block flipped anything (the trap).
    maps, labels, frames = stacked_maps([False, True, False, False, False])
    directions = block_directions(maps, labels, frames)
    np.testing.assert_allclose(directions, [-1, 1, -1, -1, -1])
    assert flip_block(directions, 0.5) is None


def test_flip_block_is_the_largest_drop():
    assert flip_block([1.0, -0.9, 0.2, -0.9, -0.8], 0.5) == 1  # the sign change with the largest drop
    assert flip_block([0.9, 0.9, -0.4], 0.5) is None  # last block not clearly backwards
    assert flip_block([0.4, -0.9, -0.9], 0.5) is None  # input not clearly forwards
    assert flip_block([0.9, -0.9], 0.5) == 1
    # A gradual profile: the threshold (first block from which all read <= -0.5) would name block 4; the
    # direction changes sign in block 3, where it drops most.
    assert flip_block([0.9, 0.6, 0.2, -0.35, -0.6, -0.8], 0.5) == 3


# -- mechanism ---------------------------------------------------------------------------------------------
def test_self_attention_direction_diagonal_and_antidiagonal():
    t = 6
    lengths = np.array([6, 4])
    eye = np.broadcast_to(np.eye(t), (2, 2, t, t)).copy()
    anti = np.zeros((2, 2, t, t))
    for b, n in enumerate(lengths):
        anti[b, :, np.arange(n), n - 1 - np.arange(n)] = 1.0  # each valid frame attends to its mirror
        anti[b, :, n:, :] = np.eye(t)[n:]  # padded queries: must not count
    directions = self_attention_directions([torch.from_numpy(eye), torch.from_numpy(anti)], lengths)
    assert directions == pytest.approx([1.0, -1.0])


def test_dominance_ratios():
    norms = [{"ffn1": 2.0, "mhsa": 1.0, "residual": 4.0}, {"ffn1": 0.0, "mhsa": 6.0, "residual": 3.0}]
    ffn, residual = dominance_ratios(norms)
    assert ffn[0] == 0.5 and math.isnan(ffn[1])
    assert residual == [0.25, 2.0]


# -- alignment on G_0 and miss rates ------------------------------------------------------------------------
def test_gradient_alignment_maps_spans_to_input_frames():
    maps_0 = np.zeros((2, 2, 5))
    maps_0[0, 0, 0:2] = 1.0  # label 0 on encoder frames 0-1
    maps_0[0, 1, 3:5] = 1.0  # label 1 on 3-4 (the last frame is clipped to the input length)
    maps_0[1, 0, 1] = 1.0  # second utterance: one label, but only 0 valid frames -> not alignable
    aligned = gradient_alignment(
        maps_0, np.array([2, 1]), np.array([5, 0]), np.array([18, 3]), subsampling=4, blank_score=-4.0
    )
    assert aligned == [[(0, 8), (12, 18)], None]


def test_miss_rate_uses_widened_encoder_spans():
    # True spans in input frames, subsampling 4: (8, 16) -> encoder [2, 4) widened to [1, 5).
    spans = [[(8, 16), (16, 24)]]  # second -> [4, 6) widened to [3, 7)
    assert miss_rate([np.array([1, 7])], spans, 4) == pytest.approx(0.5)  # 1 hit, 7 misses
    assert miss_rate([np.array([4, 3])], spans, 4) == 0.0
    assert math.isnan(miss_rate([], [], 4))


def test_word_spans_merge_label_pieces():
    pieces = [(0, 4), (4, 10), (12, 15), (15, 20)]
    assert word_spans(pieces, np.array([0, 0, 1, 1])) == [(0, 10), (12, 20)]
    assert word_spans(pieces, None) == pieces


# -- labels, verdict, early stopping ---------------------------------------------------------------------
def reading(
    attention: float, peak: float, accuracy: float, blocks: list[float], step: int = 100, **kw
) -> Evaluation:
    return Evaluation(
        step=step,
        loss=1.0,
        accuracy=accuracy,
        attention_direction=attention,
        attention_peak=peak,
        block_directions=blocks,
        **kw,
    )


def test_classify_rejects_the_flat_attention_trap():
    trap = reading(-0.9, 0.05, 0.25, [0.9, 0.9, 0.9])
    assert classify(trap, CFG) == "undecided"
    # Even when the attention is sharp and the model accurate, a forwards encoder vetoes `reversed`.
    assert classify(reading(-0.9, 0.6, 0.9, [0.9, 0.9, 0.9]), CFG) == "undecided"


def test_classify_reversed_normal_and_disagreement():
    assert classify(reading(-0.9, 0.6, 0.9, [0.9, 0.8, -0.9]), CFG) == "reversed"
    assert classify(reading(0.95, 0.6, 0.9, [0.9, 0.9, 0.9]), CFG) == "normal"
    assert classify(reading(0.95, 0.6, 0.9, [0.9, 0.9, -0.9]), CFG) == "undecided"  # encoder disagrees
    assert classify(reading(-0.9, 0.6, 0.9, [-0.9, -0.9, -0.9]), CFG) == "undecided"  # input backwards
    assert classify(reading(0.3, 0.6, 0.9, [0.9, 0.9, 0.9]), CFG) == "undecided"  # not monotonic
    assert classify(reading(0.95, 0.6, 0.4, [0.9, 0.9, 0.9]), CFG) == "undecided"  # inaccurate


def test_focus_decides_long_utterances_and_keeps_short_ones_as_they_were():
    # Long utterances: a sharp but multi-frame attention (peak 0.12 over T' = 150: 18x uniform) is decided.
    assert classify(reading(0.95, 0.12, 0.9, [0.9, 0.9, 0.9], attention_focus=18.0), CFG) == "normal"
    assert classify(reading(-0.9, 0.12, 0.9, [0.9, 0.8, -0.9], attention_focus=18.0), CFG) == "reversed"
    # Flat attention on long utterances stays undecided (peak 0.02 over T' = 150: 3x uniform).
    assert classify(reading(0.95, 0.02, 0.9, [0.9, 0.9, 0.9], attention_focus=3.0), CFG) == "undecided"
    # On short utterances (T' <= min_focus / min_peak = 40) a peak below min_peak cannot reach min_focus,
    # so the old absolute rule decides alone: below 0.2 stays undecided, as before.
    for frames in (9, 20, 34, 40):
        for peak in (0.05, 0.15, 0.199):
            e = reading(0.95, peak, 0.9, [0.9, 0.9, 0.9], attention_focus=peak * frames)
            assert classify(e, CFG) == "undecided"


def test_utterances_reading_backwards_block_normal_and_carry_reversed():
    # Mean forwards, but a third of the utterances read backwards: a flip confined to some utterances.
    partial = reading(0.6, 0.6, 0.9, [0.9, 0.9, 0.9], attention_backward_fraction=1 / 3)
    assert classify(partial, CFG) == "undecided"
    assert classify(reading(0.6, 0.6, 0.9, [0.9, 0.9, 0.9], attention_backward_fraction=0.2), CFG) == "normal"
    few = reading(-0.6, 0.6, 0.9, [0.9, 0.8, -0.9], attention_backward_fraction=0.5)
    assert classify(few, CFG) == "undecided"  # mean backwards, but only half the utterances
    most = reading(-0.6, 0.6, 0.9, [0.9, 0.8, -0.9], attention_backward_fraction=0.8)
    assert classify(most, CFG) == "reversed"


def history(*labels: str, every: int = 100) -> list[Evaluation]:
    return [
        reading(0.0, 0.5, 0.9, [0.9, -0.9], step=every * (i + 1), label=label, flip_block=1)
        for i, label in enumerate(labels)
    ]


def test_verdict_confirms_label_and_times_the_flip():
    result = verdict(history("undecided", "reversed", "normal", "reversed", "reversed"), CFG)
    assert result["label"] == "reversed"
    assert result["time_to_flip"] == 400  # reversed from the 4th evaluation on
    assert result["flip_block"] == 1
    assert result["step"] == 500


def test_verdict_unconfirmed_or_not_reversed():
    result = verdict(history("reversed", "reversed", "normal"), CFG)
    assert result["label"] == "undecided" and result["time_to_flip"] is None
    assert result["flip_block"] is None
    result = verdict(history("normal", "normal"), CFG)
    assert result["label"] == "normal" and result["flip_block"] is None
    assert verdict(history("reversed"), CFG)["label"] == "undecided"  # one evaluation is not confirmed
    assert time_to_flip(history("normal", "reversed")) == 200
    assert verdict([], CFG)["label"] == "undecided"


def test_transient_counts_backward_attention_the_label_hides():
    readings = [
        reading(attention, 0.1, 0.3, [0.9, 0.9], step=100 * (i + 1))
        for i, attention in enumerate([0.1, -0.6, -0.9, 0.2, 0.95])
    ]
    phase = transient(readings, CFG)
    assert phase["backward_evaluations"] == 2
    assert (phase["backward_first_step"], phase["backward_last_step"]) == (200, 300)
    assert phase["min_attention_direction"] == pytest.approx(-0.9)
    assert phase["max_reversal_score"] == pytest.approx(-(-0.9 + 0.9) / 2)
    forwards = transient(readings[-1:], CFG)
    assert forwards["backward_evaluations"] == 0 and forwards["backward_first_step"] is None


def test_verdict_reports_the_flipping_blocks_ratios_before_and_after():
    def at(step: int, label: str, ratio: float) -> Evaluation:
        blocks = [0.9, 0.9, -0.9] if label == "reversed" else [0.9, 0.9, 0.9]
        return reading(
            -0.9 if label == "reversed" else 0.0,
            0.5,
            0.9,
            blocks,
            step=step,
            label=label,
            flip_block=2 if label == "reversed" else None,
            mhsa_ffn_ratio=[0.1, ratio],
            mhsa_residual_ratio=[0.05, ratio / 2],
        )

    runs = [
        at(100, "undecided", 0.3),
        at(200, "undecided", 0.5),
        at(300, "reversed", 2.0),
        at(400, "reversed", 3.0),
    ]
    result = verdict(runs, CFG)
    assert result["label"] == "reversed" and result["flip_block"] == 2 and result["time_to_flip"] == 300
    assert result["mhsa_ffn_ratio_before"] == 0.5  # block 2 at step 200, the last reading before the flip
    assert result["mhsa_ffn_ratio_after"] == 3.0
    assert result["mhsa_residual_ratio_after"] == 1.5
    assert "mhsa_ffn_ratio_before" not in verdict(runs[:2], CFG)  # no flip, no mechanism reading


def test_should_stop():
    on = CFG.model_copy(update={"early_stop": True})  # patience 3, min_steps 300
    assert should_stop(history("normal", "normal", "normal"), on)
    assert not should_stop(history("normal", "normal", "normal"), CFG)  # early stop off
    assert not should_stop(history("normal", "normal", "normal", every=90), on)  # step 270 < 300
    assert not should_stop(history("undecided", "undecided", "undecided"), on)
    assert not should_stop(history("reversed", "normal", "normal"), on)
    assert not should_stop(history("undecided", "normal", "normal"), on)
    assert not should_stop(history("normal", "normal"), on)
    assert should_stop(history("normal", "reversed", "reversed", "reversed"), on)


def test_evaluation_metrics_and_dict():
    e = reading(-0.8, 0.5, 0.9, [0.9, 0.2, -0.6], label="reversed", mhsa_ffn_ratio=[1.0, 3.0])
    e.arrays = {"attention": np.zeros((1, 2, 3))}
    assert e.reversal_score == pytest.approx(0.7)  # -(-0.8 + -0.6) / 2
    metrics = e.metrics()
    assert metrics["label_code"] == -1.0 and metrics["flip_block"] == -1.0 and metrics["shifted"] == 0.0
    assert metrics["block_direction_2"] == -0.6 and metrics["mhsa_ffn_ratio_2"] == 3.0
    assert all(isinstance(v, float) for v in metrics.values())
    assert "arrays" not in metrics and "label" not in metrics
    as_dict = e.to_dict()
    assert "arrays" not in as_dict and as_dict["label"] == "reversed"
    json.dumps(as_dict)


# -- the real model ------------------------------------------------------------------------------------------


def tiny_model(**overrides):
    from trainers.model.aed import ConformerAED

    cfg = build_config({**TINY_MODEL, **{f"model.{k}": v for k, v in overrides.items()}}).model
    torch.manual_seed(0)
    return ConformerAED(cfg, FEATURES, VOCAB)


def tiny_batch():
    g = torch.Generator().manual_seed(1)
    lengths, label_lengths = torch.tensor([29, 17, 12]), torch.tensor([4, 2, 3])
    features = torch.randn(3, 29, FEATURES, generator=g)
    features = features * (torch.arange(29)[None, :, None] < lengths[:, None, None])
    labels = torch.randint(1, VOCAB, (3, 4), generator=g)
    labels = labels * (torch.arange(4)[None, :] < label_lengths[:, None])
    spans = [[(4 * i, 4 * i + 4) for i in range(n)] for n in label_lengths.tolist()]
    return Batch(features, lengths, labels, label_lengths, spans, [None] * 3)


def per_label_reference(model, batch) -> torch.Tensor:
    """Slow G maps: one forward of the batch, then one backward per (utterance, label)."""
    model.eval()
    out = model(batch.features, batch.feature_lengths, batch.labels, batch.label_lengths)
    log_probs = out.logits.log_softmax(-1).gather(-1, out.targets[..., None]).squeeze(-1)  # (U, S+1)
    u_count, s_count = batch.labels.shape
    maps = torch.zeros(len(out.encoder.hidden), u_count, s_count, out.encoder.mask.shape[1])
    for u in range(u_count):
        for s in range(int(batch.label_lengths[u])):
            grads = torch.autograd.grad(log_probs[u, s], out.encoder.hidden, retain_graph=True)
            for i, g in enumerate(grads):
                maps[i, u, s] = g[u].norm(dim=-1) * out.encoder.mask[u]
    return maps


def test_gradient_maps_match_a_per_label_reference():
    # Unmasked padding: padded frames then do reach the labels, and must still read zero in the maps.
    model, batch = tiny_model(pad_mode="unmasked", conv_norm="batch"), tiny_batch()
    model.train()
    maps = gradient_maps(model, batch, chunk=5)  # 9 labels in chunks of 5: two passes
    assert model.training  # mode restored
    assert maps.shape == (3, 3, 4, 8)  # (L+1, U, S, T'): T' = ceil(29 / 4)
    assert maps[:, 1, 2:].abs().max() == 0 and maps[:, 2, 3:].abs().max() == 0  # padded labels
    assert maps[:, 2, :3, 3:].abs().max() == 0  # padded frames (12 input frames -> 3)
    assert maps[:, 0].min() >= 0 and maps[:, 0].sum() > 0
    torch.testing.assert_close(maps, per_label_reference(model, batch), atol=1e-5, rtol=1e-5)


def test_gradient_maps_of_a_subset_match_the_full_batch():
    model, batch = tiny_model(decoder="transformer", decoder_layers=1), tiny_batch()
    full = gradient_maps(model, batch)
    first = gradient_maps(model, batch.take(1), chunk=1)  # same padding, one label per pass
    torch.testing.assert_close(first, full[:, :1], atol=1e-5, rtol=1e-5)


def test_evaluate_pools_length_sorted_batches_like_one_batch():
    # Zero padding makes every reading independent of the batch it sits in, so reading the held-out set in
    # two batches must give what one batch gives (sums and means pooled over utterances and frames).
    model, batch = tiny_model(), tiny_batch()
    cfg = DetectorConfig(gradient_utterances=3)
    one = evaluate(model, batch, step=3, cfg=cfg, subsampling=4)
    parts = [batch.take(2), _rest(batch, 2)]
    two = evaluate(model, parts, step=3, cfg=cfg, subsampling=4)
    for name in ("loss", "accuracy", "attention_direction", "attention_peak", "attention_focus"):
        assert getattr(two, name) == pytest.approx(getattr(one, name), rel=1e-5), name
    np.testing.assert_allclose(two.block_directions, one.block_directions, atol=1e-6)
    np.testing.assert_allclose(two.mhsa_residual_ratio, one.mhsa_residual_ratio, rtol=1e-5)
    np.testing.assert_allclose(two.self_initial_reach, one.self_initial_reach, rtol=1e-5)
    assert two.tse_boundary_ms == pytest.approx(one.tse_boundary_ms)


def _rest(batch: Batch, n: int) -> Batch:
    from dataclasses import replace

    keep = slice(n, None)
    return replace(
        batch,
        features=batch.features[keep, : int(batch.feature_lengths[keep].max())],
        feature_lengths=batch.feature_lengths[keep],
        labels=batch.labels[keep],
        label_lengths=batch.label_lengths[keep],
        spans=batch.spans[keep],
        word_index=batch.word_index[keep],
    )


def test_evaluate_without_ground_truth_reports_tse_as_missing():
    from dataclasses import replace

    model, batch = tiny_model(), tiny_batch()
    e = evaluate(model, replace(batch, spans=[None] * 3), step=3, cfg=DetectorConfig(), subsampling=4)
    assert math.isnan(e.tse_boundary_ms) and math.isnan(e.attention_miss_rate)
    assert math.isfinite(e.attention_direction) and len(e.block_directions) == 3


def test_evaluate_on_a_tiny_model_and_plot(tmp_path):
    model, batch = tiny_model(), tiny_batch()
    model.train()
    cfg = DetectorConfig(gradient_utterances=2)
    e = evaluate(model, batch, step=3, cfg=cfg, subsampling=4, label_smoothing=0.1)
    assert model.training
    assert len(e.block_directions) == 3 and len(e.mhsa_ffn_ratio) == len(e.self_attention_direction) == 2
    assert e.label in ("normal", "reversed", "undecided") and e.step == 3
    assert (e.reason is None) == (e.label != "undecided") and math.isnan(e.word_overlap)  # no word index
    assert 0 <= e.accuracy <= 1 and math.isfinite(e.loss) and math.isfinite(e.tse_boundary_ms)
    assert e.arrays["attention"].shape == (3, 4, 8) and e.arrays["gradient_maps"].shape == (3, 4, 8)
    json.dumps(e.to_dict())
    plot_attention(tmp_path / "attention.png", e.arrays)
    plot_gradients(tmp_path / "gradients.png", e.arrays)
    plot_gradients(tmp_path / "empty.png", {})
    for name in ("attention.png", "gradients.png", "empty.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
