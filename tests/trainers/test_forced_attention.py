"""Forced cross-attention (`model.forced_attention_*`): its targets, its schedule, the learned attention the
decoder keeps beside it (which the detector reads), and the refusal of the keys it replaced."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FEATURES, TINY_MODEL, VOCAB
from trainers.config import ConfigError, DetectorConfig, build_config
from trainers.data import Batch
from trainers.detector.evaluate import evaluate
from trainers.model.aed import ConformerAED
from trainers.model.forcing import forced_target, learned_share

FORCED, BLEND = 10, 4  # forced before step 10, blended over steps 10..13, learned alone from 14
LENGTHS = (29, 17, 8)  # input frames -> 8, 5, 2 encoder frames at x4


def make(decoder: str = "lstm", **overrides) -> ConformerAED:
    cfg = build_config(
        {
            **TINY_MODEL,
            "model.decoder": decoder,
            "model.decoder_layers": 1,  # one layer: its queries do not depend on the forced weights
            "model.decoder_heads": 2,
            "model.forced_attention_steps": FORCED,
            "model.forced_attention_blend_steps": BLEND,
            **{f"model.{k}": v for k, v in overrides.items()},
        }
    ).model
    torch.manual_seed(0)
    return ConformerAED(cfg, FEATURES, VOCAB).eval()


def batch(seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths, label_lengths = torch.tensor(LENGTHS), torch.tensor([4, 2, 1])
    features = torch.randn(3, int(lengths.max()), FEATURES, generator=g)
    features = features * (torch.arange(features.shape[1])[None, :, None] < lengths[:, None, None])
    labels = torch.randint(1, VOCAB, (3, 4), generator=g)
    labels = labels * (torch.arange(4)[None, :] < label_lengths[:, None])
    return Batch(features, lengths, labels, label_lengths, spans=[None] * 3, word_index=[None] * 3)


def run_at(model: ConformerAED, step: int | None, data: Batch):
    model.set_step(step)
    with torch.no_grad():
        return model(data.features, data.feature_lengths, data.labels, data.label_lengths)


# Encoder lengths 8, 5, 2 (T' = 8); k = 3.
EXPECTED_TARGETS = {
    "centre": [[0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]],
    "first": [[1, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]],
    "frame": [[0, 0, 1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]],  # clipped: 2
    "window": [[1 / 3] * 3 + [0] * 5, [1 / 3] * 3 + [0] * 5, [1 / 2] * 2 + [0] * 6],  # clipped: 2 frames
}


@pytest.mark.parametrize("at", list(EXPECTED_TARGETS))
def test_the_forced_target_is_the_centre_the_first_frame_frame_k_or_a_window(at):
    cfg = make(forced_attention_at=at, forced_attention_frames=3).cfg
    target = forced_target(torch.tensor([8, 5, 2]), 8, cfg)
    torch.testing.assert_close(target, torch.tensor(EXPECTED_TARGETS[at], dtype=torch.float32))


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
@pytest.mark.parametrize("at", list(EXPECTED_TARGETS))
def test_while_forced_the_decoder_uses_the_target_on_every_label(decoder, at):
    model, data = make(decoder, forced_attention_at=at, forced_attention_frames=3), batch()
    out = run_at(model, FORCED - 1, data)
    expected = torch.tensor(EXPECTED_TARGETS[at], dtype=torch.float32)[:, None, :]
    torch.testing.assert_close(out.cross_attention, expected.expand_as(out.cross_attention))


def test_the_schedule_forces_then_blends_linearly_then_releases():
    cfg = make().cfg
    shares = [learned_share(step, cfg) for step in (0, 9, 10, 11, 12, 13, 14, 100, None)]
    assert shares == [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
@pytest.mark.parametrize(("step", "share"), [(FORCED - 1, 0.0), (FORCED + 1, 0.25), (FORCED + 3, 0.75)])
def test_the_weights_used_blend_the_target_into_the_learned_ones_as_scheduled(decoder, step, share):
    model, data = make(decoder, forced_attention_at="window", forced_attention_frames=2), batch()
    out = run_at(model, step, data)
    target = torch.zeros(3, 8)
    target[:, :2] = 0.5  # k = 2: the first two frames of every utterance
    expected = (1 - share) * target[:, None, :] + share * out.learned_attention
    torch.testing.assert_close(out.cross_attention, expected)
    assert not torch.allclose(out.learned_attention, out.cross_attention)


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
def test_the_learned_attention_is_the_decoders_own_and_the_same_tensor_once_released(decoder):
    model, data = make(decoder, forced_attention_at="first"), batch()
    forced, released = run_at(model, 0, data), run_at(model, FORCED + BLEND, data)
    assert released.learned_attention is released.cross_attention
    # A distribution over each utterance's valid frames, not the one-hot it is replaced by.
    learned = forced.learned_attention
    valid = forced.encoder.mask[:, None, :].expand_as(learned)
    torch.testing.assert_close(learned.sum(-1), torch.ones(learned.shape[:2]))
    assert (learned[~valid] == 0).all() and learned.max() < 1.0
    if decoder == "transformer":  # one layer: its learned weights do not depend on the forced ones
        torch.testing.assert_close(forced.learned_attention, released.cross_attention)


def test_the_detector_reads_the_learned_attention_while_forced():
    # A one-layer Transformer decoder's learned weights do not depend on forcing, so while forced the
    # detector must read exactly what it reads once released, and never the forced one-hot (peak 1.00).
    model, data = make("transformer", forced_attention_at="first"), batch()
    cfg = DetectorConfig(gradient_utterances=1)
    forced = evaluate(model, data, 0, cfg, subsampling=4)
    assert model.step == 0  # evaluate reads the model at the step it labels
    released = evaluate(model, data, FORCED + BLEND, cfg, subsampling=4)
    assert forced.attention_peak < 0.99
    assert forced.attention_peak == pytest.approx(released.attention_peak, rel=1e-6)
    assert forced.attention_direction == pytest.approx(released.attention_direction, rel=1e-6)
    torch.testing.assert_close(
        torch.from_numpy(forced.arrays["attention"]), torch.from_numpy(released.arrays["attention"])
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("model.center_attention_steps", "model.forced_attention_steps"),
        ("model.center_attention_blend_steps", "model.forced_attention_blend_steps"),
    ],
)
def test_the_old_key_names_are_refused_naming_the_new_key(old, new, tmp_path, capsys):
    with pytest.raises(ConfigError) as caught:
        build_config({old: 100})
    assert caught.value.key == old and str(caught.value) == f"{old}: renamed: use {new}"

    from trainers.train import main

    assert main(["--set", f"{old}=100", "--print-config"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {old}: renamed: use {new}"

    from sweep.space import SpaceError, load_space

    path = tmp_path / "old.yaml"
    path.write_text(f"name: old\ntrainer: conformer_aed\nbase:\n  {old}: 100\n")
    with pytest.raises(SpaceError) as refused:
        load_space(path)
    assert refused.value.key == f"base.{old}" and refused.value.message == f"renamed: use {new}"


def test_forced_attention_frames_counts_from_one():
    with pytest.raises(ConfigError, match="forced_attention_frames"):
        build_config({"model.forced_attention_frames": 0})
    with pytest.raises(ConfigError, match="forced_attention_at"):
        build_config({"model.forced_attention_at": "last"})


def test_every_report_records_what_was_imposed_at_its_step(tmp_path):
    """The trial reports the MHSA scale and the learned attention's share of the step it just trained, so
    `sweep.report` can read from which evaluation an intervention held still."""
    from tests.conftest import TINY
    from trainers.train import Trial

    schedule = [[8, 1.0], [16, 3.0]]
    overrides = {**TINY, "train.steps": 20, "detector.every": 4, "model.mhsa_scale_schedule": schedule}
    overrides |= {"model.forced_attention_at": "first", "model.forced_attention_steps": FORCED}
    reports = []
    config = build_config({**overrides, "model.forced_attention_blend_steps": BLEND})
    Trial(config, tmp_path, report=lambda metrics, _: reports.append(metrics), log=lambda _: None).run()
    got = [(r["step"], r["mhsa_scale"], r["learned_attention_share"]) for r in reports]
    # evaluation at step s: the step just trained is s - 1; forced to 9, blended over 10..13, released at 14
    assert got == [
        (4, 1.0, 0.0),
        (8, 1.0, 0.0),
        (12, pytest.approx(1.0 + 2.0 * 3 / 8), pytest.approx(1 / 4)),
        (16, pytest.approx(1.0 + 2.0 * 7 / 8), 1.0),
        (20, 3.0, 1.0),
    ]
