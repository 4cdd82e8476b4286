"""The paper's conditions, one knob at a time: log-mel-like features and their edges, length-sorted batches,
RETURNN's initialisation, attention without biases, scaled absolute positions and the SpecAugment ramp.
(That every knob at its default reproduces the earlier numbers is `test_defaults_reproduce.py`.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import FEATURES, TINY_MODEL, VOCAB
from trainers.config import ConfigError, build_config
from trainers.data import SyntheticCorpus, TrainStream, heldout_batches
from trainers.model.aed import ConformerAED
from trainers.model.layers import Dropout, sinusoids
from trainers.specaugment import paper_mask_counts, spec_augment


# -- log-mel-like features ---------------------------------------------------------------------------------
def test_log_mel_features_put_silence_below_speech_and_padding_at_the_floor():
    cfg = build_config({"data.features": "log_mel"}).data
    batch = SyntheticCorpus(cfg).train_batch(seed=0, step=0, size=8)
    assert batch.pad_value == cfg.log_floor == -10.0
    silence, speech = [], []
    for i, length in enumerate(batch.feature_lengths.tolist()):
        assert batch.features[i, length:].eq(cfg.log_floor).all()  # padding sits at the floor
        assert batch.features[i, :length].gt(cfg.log_floor).all()  # no real frame reaches it
        first, last = batch.spans[i][0][0], batch.spans[i][-1][1]
        silence.append(batch.features[i, : first - cfg.transition_frames])
        speech.append(batch.features[i, first:last])
    silence, speech = torch.cat(silence), torch.cat(speech)
    assert silence.mean() == pytest.approx(cfg.silence_level, abs=0.2)  # low ...
    assert silence.std() > 0.1  # ... but noisy
    assert speech.mean() == pytest.approx(cfg.speech_level, abs=0.5)
    # A convolution's zero padding reads as loud: above every silent frame.
    assert silence.max() < 0.0


def test_log_floor_must_lie_below_silence():
    with pytest.raises(ConfigError, match="data.*log_floor"):
        build_config({"data.features": "log_mel", "data.log_floor": -5.0, "data.silence_level": -7.0})


# -- length-sorted batches ---------------------------------------------------------------------------------
def padding_fraction(batch) -> float:
    return 1.0 - float(batch.feature_lengths.sum()) / batch.features.shape[0] / batch.features.shape[1]


def test_bucketed_batches_hold_similar_lengths_and_resume_exactly():
    cfg = build_config({"data.min_labels": 2, "data.max_labels": 14}).data
    corpus = SyntheticCorpus(cfg)
    bucketed = TrainStream(corpus, (0, 3), batch_size=8, bucket_batches=4)
    independent = TrainStream(corpus, (0, 3), batch_size=8)
    steps = range(16)
    padded = np.mean([padding_fraction(bucketed.batch(s)) for s in steps])
    assert padded < 0.5 * np.mean([padding_fraction(independent.batch(s)) for s in steps])
    # The 4 batches of one pool split it at its sorted lengths: their length ranges do not overlap.
    ranges = sorted(
        (int(b.feature_lengths.min()), int(b.feature_lengths.max())) for b in map(bucketed.batch, range(4))
    )
    assert all(high <= low for (_, high), (low, _) in zip(ranges, ranges[1:], strict=False))
    # A resumed trial asks for step 6 first and must get what the uninterrupted one got.
    resumed = TrainStream(corpus, (0, 3), batch_size=8, bucket_batches=4).batch(6)
    assert torch.equal(resumed.features, bucketed.batch(6).features)
    assert not torch.equal(bucketed.batch(6).features, bucketed.batch(7).features)


def test_heldout_batches_are_length_sorted_and_keep_every_utterance():
    corpus = SyntheticCorpus(build_config({}).data)
    one = heldout_batches(corpus, 16)
    four = heldout_batches(corpus, 16, batches=4)
    assert len(one) == 1 and [len(b.feature_lengths) for b in four] == [4, 4, 4, 4]
    lengths = torch.cat([b.feature_lengths for b in four])
    assert torch.equal(lengths, lengths.sort().values)
    assert sorted(lengths.tolist()) == sorted(one[0].feature_lengths.tolist())


# -- initialisation, attention biases, absolute positions --------------------------------------------------
def make(seed: int = 0, **model) -> ConformerAED:
    cfg = build_config({**TINY_MODEL, **{f"model.{k}": v for k, v in model.items()}}).model
    torch.manual_seed(seed)
    return ConformerAED(cfg, FEATURES, VOCAB)


def test_returnn_init_is_glorot_with_zero_biases():
    model = make(init="returnn", attention_bias=False)
    for name, parameter in model.named_parameters():
        if name.endswith("bias") or ".bias_" in name:
            assert parameter.abs().max() == 0, name
        elif parameter.ndim >= 2:
            fan_out, fan_in = parameter.shape[0], parameter[0].numel()
            receptive = parameter[0, 0].numel() if parameter.ndim > 2 else 1
            bound = math.sqrt(6 / (fan_in + fan_out * receptive))
            assert parameter.abs().max() <= bound + 1e-6, name
            assert parameter.abs().max() > 0.8 * bound, name  # uniform: it fills its range
    assert (
        model.encoder.blocks[0].attention.qkv.bias is None
        and model.encoder.blocks[0].attention.out.bias is None
    )
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert all(bool(n.weight.eq(1).all()) for n in norms)


def test_returnn_init_starts_the_branches_larger_against_the_residual():
    # The variance arithmetic: ~2x for MHSA, ~2.6x for the ReLU^2 FFN, in blocks past the first.
    cfg = build_config({"model.ffn_activation": "relu2", "model.layers": 4})
    batch = SyntheticCorpus(cfg.data).train_batch(0, 0, 8)

    def ratios(init: str) -> np.ndarray:
        out = []
        for seed in range(3):
            torch.manual_seed(seed)
            model = ConformerAED(cfg.model.model_copy(update={"init": init}), cfg.data.feature_dim, 25).eval()
            with torch.no_grad():
                norms = model.encode(batch.features, batch.feature_lengths, collect=True).block_norms
            out.append([[n["mhsa"] / n["residual"], n["ffn1"] / n["residual"]] for n in norms[1:]])
        return np.mean(out, axis=(0, 1))

    mhsa, ffn = ratios("returnn") / ratios("torch")
    assert 1.5 < mhsa < 2.6 and 2.0 < ffn < 3.3


def test_attention_without_biases_runs_with_self_attention_off():
    model = make(attention_bias=False, self_attention_off_steps=5)
    features, lengths = torch.randn(2, 20, FEATURES), torch.tensor([20, 13])
    labels, label_lengths = torch.tensor([[1, 2], [3, 0]]), torch.tensor([2, 1])
    for step in (0, 10):  # value projection only, then full attention
        model.set_step(step)
        out = model(features, lengths, labels, label_lengths)
        assert torch.isfinite(out.logits).all()


def test_absolute_positions_scaled_by_sqrt_d():
    plain, scaled = make(pos_enc="abs"), make(pos_enc="abs", abs_pos_xscale=True)
    features, lengths = torch.randn(1, 24, FEATURES), torch.tensor([24])
    plain.eval(), scaled.eval()
    with torch.no_grad():
        frontend, _ = scaled.encoder.frontend(features, lengths)
        h0, _ = scaled.encoder.embed(features, lengths)
        unscaled, _ = plain.encoder.embed(features, lengths)
    d = frontend.shape[-1]
    positions = sinusoids(torch.arange(frontend.shape[1]), d)
    torch.testing.assert_close(h0, frontend * math.sqrt(d) + positions)
    torch.testing.assert_close(unscaled, frontend + positions)


# -- dropout shared over time -----------------------------------------------------------------------------
def test_broadcast_dropout_drops_a_feature_for_the_whole_utterance():
    torch.manual_seed(0)
    x = torch.ones(8, 50, 64)
    out = Dropout(0.25, broadcast=True).train()(x)
    assert torch.equal(out, out[:, :1].expand_as(out))  # the same mask at every frame
    kept = out[:, 0] != 0
    assert 0.6 < kept.float().mean() < 0.9 and torch.allclose(out[:, 0][kept], torch.tensor(1 / 0.75))
    assert not torch.equal(kept[0], kept[1])  # one mask per utterance
    per_frame = Dropout(0.25).train()(x)
    assert not torch.equal(per_frame, per_frame[:, :1].expand_as(per_frame))
    assert torch.equal(Dropout(0.25, broadcast=True).eval()(x), x)
    # Without broadcast it is nn.Dropout, draw for draw: the earlier studies keep their numbers.
    torch.manual_seed(1)
    ours = Dropout(0.25).train()(x)
    torch.manual_seed(1)
    torch.testing.assert_close(ours, torch.nn.Dropout(0.25).train()(x))


def test_broadcast_dropout_reaches_every_encoder_dropout_but_attention_weights():
    model = make(dropout_broadcast=True)
    dropouts = [m for m in model.encoder.modules() if isinstance(m, Dropout)]
    assert dropouts and all(m.broadcast for m in dropouts)
    # the frontend's, then per block FFN1, FFN2, MHSA out and conv
    assert len(dropouts) == 1 + 4 * len(model.encoder.blocks)
    assert not any(m.broadcast for m in make().encoder.modules() if isinstance(m, Dropout))


# -- the SpecAugment ramp ----------------------------------------------------------------------------------
def test_paper_ramp_mask_counts_follow_returnns_stages():
    lengths = torch.tensor([50, 250, 1000])
    steps = (100, 200, 300)
    expected = {  # step -> (time min, time max, feature min, feature max) per length
        50: ([0, 0, 0], [0, 0, 0], [0] * 3, [0] * 3),
        100: ([0, 0, 0], [2, 2, 10], [0] * 3, [2] * 3),
        200: ([1, 1, 1], [4, 4, 20], [1] * 3, [3] * 3),
        300: ([2, 2, 2], [8, 8, 40], [2] * 3, [5] * 3),
    }
    for step, ranges in expected.items():
        got = [c.tolist() for c in paper_mask_counts(lengths, step, steps)]
        assert got == [list(r) for r in ranges], step


def test_paper_ramp_masks_within_length_with_the_mask_value():
    cfg = build_config(
        {
            "train.specaug": "paper",
            "train.specaug_steps": [10, 20, 30],
            "train.specaug_time_width": 20,  # the paper's
            "train.specaug_mask_value": 5.0,
        }
    ).train
    features, lengths = torch.zeros(6, 400, 40), torch.tensor([400, 300, 200, 100, 50, 10])
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(spec_augment(features, lengths, 5, cfg, generator), features)  # off before s0
    masked = spec_augment(features, lengths, 40, cfg, generator)
    assert set(masked.unique().tolist()) == {0.0, 5.0}
    time_masked = masked.eq(5.0).all(-1)  # (B, T) whole frames masked
    for i, n in enumerate(lengths.tolist()):
        assert not time_masked[i, n:].any()  # padding untouched
    assert time_masked[0].any() and masked.eq(5.0).all(1).any()  # time and feature masks both present
    # By the last stage about a fifth of a long utterance is masked in time (RETURNN: up to T/100 * 4 masks
    # of up to 20 frames).
    draws = [spec_augment(features, lengths, 40, cfg, generator)[0].eq(5.0).all(-1) for _ in range(20)]
    assert 0.12 < float(torch.stack(draws).float().mean()) < 0.3
