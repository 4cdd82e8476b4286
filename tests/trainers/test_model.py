"""The Conformer AED: shapes, masking, positional variants, the reverse control and the mitigations."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FEATURES, TINY_MODEL, VOCAB
from trainers.config import POS_ENCODINGS, build_config
from trainers.model.aed import ConformerAED
from trainers.model.conformer import MaskedBatchNorm
from trainers.model.encoder import reverse_valid_frames
from trainers.model.frontend import subsampled_lengths

SMALL = {**TINY_MODEL, "model.decoder_layers": 2, "model.decoder_heads": 2}


def make(seed: int = 0, **overrides) -> ConformerAED:
    cfg = build_config({**SMALL, **{f"model.{k}": v for k, v in overrides.items()}}).model
    torch.manual_seed(seed)
    return ConformerAED(cfg, FEATURES, VOCAB)


def batch(lengths=(29, 17, 8), label_lengths=(4, 2, 1), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    lengths, label_lengths = torch.tensor(lengths), torch.tensor(label_lengths)
    features = torch.randn(len(lengths), int(lengths.max()), FEATURES, generator=g)
    features = features * (torch.arange(features.shape[1])[None, :, None] < lengths[:, None, None])
    labels = torch.randint(1, VOCAB, (len(lengths), int(label_lengths.max())), generator=g)
    labels = labels * (torch.arange(labels.shape[1])[None, :] < label_lengths[:, None])
    return features, lengths, labels, label_lengths


def test_subsampled_lengths_is_ceil_division():
    lengths = torch.arange(1, 40)
    assert torch.equal(subsampled_lengths(lengths, 4), (lengths + 3) // 4)
    assert torch.equal(subsampled_lengths(lengths, 6), (lengths + 5) // 6)


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
@pytest.mark.parametrize("subsampling", [4, 6])
def test_output_shapes(decoder, subsampling):
    model = make(decoder=decoder, subsampling=subsampling, ctc_layers=[1], conv_kernel=4)
    features, lengths, labels, label_lengths = batch()
    out = model(features, lengths, labels, label_lengths)
    t_enc = int(subsampled_lengths(lengths, subsampling).max())
    b, s = len(lengths), int(label_lengths.max()) + 1
    assert out.logits.shape == (b, s, VOCAB)
    assert out.targets.shape == out.target_mask.shape == (b, s)
    assert out.cross_attention.shape == (b, s, t_enc)
    assert len(out.encoder.hidden) == 3 and all(h.shape == (b, t_enc, 16) for h in out.encoder.hidden)
    assert torch.equal(out.encoder.lengths, subsampled_lengths(lengths, subsampling))
    assert out.ctc_logits[1].shape == (b, t_enc, VOCAB + 1)
    # Targets are the labels, then EOS; exactly label_length + 1 of them are real.
    assert torch.equal(out.target_mask.sum(1), label_lengths + 1)
    assert torch.equal(out.targets[0, :4], labels[0]) and out.targets[0, 4] == 0
    assert out.encoder.self_attention is None and out.encoder.block_norms is None


def test_collect_returns_attention_and_norms():
    model = make()
    features, lengths, labels, label_lengths = batch()
    enc = model.encode(features, lengths, collect=True)
    t_enc = enc.mask.shape[1]
    assert [a.shape for a in enc.self_attention] == [(3, 2, t_enc, t_enc)] * 2
    for norms in enc.block_norms:
        assert set(norms) == {"ffn1", "mhsa", "residual"} and all(v > 0 for v in norms.values())


@pytest.mark.parametrize("scale_from", [1, 2])
def test_mhsa_scale_multiplies_the_self_attention_branch_from_its_block(scale_from):
    features, lengths, _, _ = batch()
    norms = {}
    for scale in (1.0, 3.0):
        model = make(mhsa_scale=scale, mhsa_scale_from=scale_from).eval()
        with torch.no_grad():
            norms[scale] = model.encode(features, lengths, collect=True).block_norms
    # Same weights; blocks before `scale_from` are untouched, so the scaled block sees the same input and
    # only its MHSA contribution grows.
    for block in range(scale_from - 1):
        assert norms[3.0][block] == pytest.approx(norms[1.0][block])
    scaled = scale_from - 1
    assert norms[3.0][scaled]["residual"] == pytest.approx(norms[1.0][scaled]["residual"])
    assert norms[3.0][scaled]["mhsa"] == pytest.approx(3.0 * norms[1.0][scaled]["mhsa"], rel=1e-5)


def test_mhsa_scale_schedule_is_piecewise_linear_and_held_beyond_its_points():
    encoder = make(mhsa_scale_schedule=[[100, 1.0], [150, 3.0], [250, 2.0]]).encoder
    at = [encoder.mhsa_scale_at(step) for step in (0, 100, 125, 150, 200, 1000, None)]
    assert at == pytest.approx([1.0, 1.0, 2.0, 3.0, 2.5, 2.0, 2.0])
    # Without a schedule the constant scale holds throughout, the trained model included.
    assert make(mhsa_scale=3.0).encoder.mhsa_scale_at(None) == 3.0


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
def test_cross_attention_is_a_distribution_over_valid_frames(decoder):
    model = make(decoder=decoder)
    features, lengths, labels, label_lengths = batch()
    out = model(features, lengths, labels, label_lengths)
    att, mask = out.cross_attention, out.encoder.mask[:, None, :].expand_as(out.cross_attention)
    torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:2]))
    assert (att[~mask] == 0).all()


@pytest.mark.parametrize("pos_enc", POS_ENCODINGS)
def test_pos_enc_forward_backward(pos_enc):
    model = make(pos_enc=pos_enc, rel_clip=2)
    features, lengths, labels, label_lengths = batch()
    loss, _ = model.loss(model(features, lengths, labels, label_lengths), 0.1, 1.0)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    attention = model.encoder.blocks[0].attention
    for name in ("pos_embed", "pos_proj", "pos_bias_u"):
        if hasattr(attention, name):  # the positional parameters themselves learn
            param = getattr(attention, name)
            param = param.weight if isinstance(param, torch.nn.Module) else param
            assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
@pytest.mark.parametrize("pad_mode", ["zero", "unmasked"])
def test_padding_invariance(decoder, pad_mode):
    """With zero padding an utterance gives the same logits alone and in a batch; unmasked padding leaks."""
    model = make(decoder=decoder, pad_mode=pad_mode, conv_norm="layer", conv_kernel=5).eval()
    features, lengths, labels, label_lengths = batch(lengths=(13, 29), label_lengths=(2, 4))
    with torch.no_grad():
        together = model(features, lengths, labels, label_lengths).logits[0, :3]
        alone = model(features[:1, :13], lengths[:1], labels[:1, :2], label_lengths[:1]).logits[0]
    if pad_mode == "zero":
        torch.testing.assert_close(alone, together, atol=1e-5, rtol=0)
    else:
        assert not torch.allclose(alone, together, atol=1e-5, rtol=0)


def test_masked_batch_norm_ignores_padding():
    norm = MaskedBatchNorm(4)
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    y = norm(x, mask)
    x2 = x.clone()
    x2[0, 3:] = 1e3
    y2 = norm(x2, mask)
    torch.testing.assert_close(y[mask], y2[mask])
    torch.testing.assert_close(y[mask].mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    assert norm.running_mean.abs().sum() > 0  # eval uses the running statistics
    expected = (x - norm.running_mean) / (norm.running_var + 1e-5).sqrt()
    torch.testing.assert_close(norm.eval()(x, mask), expected)


def test_reverse_valid_frames():
    x = torch.arange(10.0).view(2, 5, 1)
    out = reverse_valid_frames(x, torch.tensor([3, 5]))
    assert out[:, :, 0].tolist() == [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]]


def test_reverse_encoder_control_reverses_from_control_block():
    # Frame-wise blocks (self-attention off, kernel 1) make the reversal exact, so frame order can be checked.
    common = {"self_attention_off_steps": 10, "conv_kernel": 1, "layers": 3}
    plain = make(**common).eval()
    control = make(**common, control="reverse_encoder", control_block=2).eval()
    control.load_state_dict(plain.state_dict())
    features, lengths, labels, label_lengths = batch()
    plain.set_step(0), control.set_step(0)
    with torch.no_grad():
        a = plain.encode(features, lengths)
        b = control.encode(features, lengths)
    torch.testing.assert_close(a.hidden[1], b.hidden[1])
    for i in (2, 3):
        torch.testing.assert_close(b.hidden[i], reverse_valid_frames(a.hidden[i], a.lengths))
        assert not torch.allclose(b.hidden[i][a.mask], a.hidden[i][a.mask])


def test_self_attention_off_stops_mixing_until_step():
    model = make(self_attention_off_steps=5, conv_kernel=1).eval()
    features, lengths = torch.randn(1, 40, FEATURES), torch.tensor([40])
    perturbed = features.clone()
    perturbed[:, 30:] += 3.0  # far outside the frontend's receptive field of encoder frame 0

    def first_frame(x, step):
        model.set_step(step)
        with torch.no_grad():
            return model.encode(x, lengths).hidden[1][0, 0]

    torch.testing.assert_close(first_frame(features, 4), first_frame(perturbed, 4))
    assert not torch.allclose(first_frame(features, 5), first_frame(perturbed, 5))
    assert not torch.allclose(first_frame(features, None), first_frame(perturbed, None))


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
def test_center_attention(decoder):
    # One decoder layer: its queries do not depend on the forced weights, so the blend is exact there.
    model = make(decoder=decoder, decoder_layers=1, forced_attention_steps=10, forced_attention_blend_steps=4)
    model.eval()
    features, lengths, labels, label_lengths = batch()

    def at(step):
        model.set_step(step)
        return model(features, lengths, labels, label_lengths)

    with torch.no_grad():
        forced = at(9)
        learned = at(None).cross_attention
        late = at(14).cross_attention
    centre = forced.encoder.lengths // 2
    expected = torch.nn.functional.one_hot(centre, forced.cross_attention.shape[-1]).float()
    torch.testing.assert_close(forced.cross_attention, expected[:, None, :].expand_as(forced.cross_attention))
    assert not torch.allclose(learned, forced.cross_attention)
    torch.testing.assert_close(late, learned)
    if decoder == "transformer":  # the LSTM's state (and so its learned weights) depends on the forced ones
        with torch.no_grad():
            half = at(12).cross_attention
        torch.testing.assert_close(half, 0.5 * expected[:, None, :] + 0.5 * learned)


def test_loss_with_ctc_layers():
    model = make(ctc_layers=[1, 2]).train()
    model.set_step(0)
    features, lengths, labels, label_lengths = batch()
    out = model(features, lengths, labels, label_lengths)
    total, stats = model.loss(out, 0.1, 1.0)
    assert torch.isfinite(total) and stats["ctc"] > 0 and 0 <= stats["accuracy"] <= 1
    torch.testing.assert_close(total.item(), stats["ce"] + stats["ctc"], rtol=1e-5, atol=1e-5)
    total.backward()
    assert model.ctc_heads["1"].weight.grad.abs().sum() > 0
    assert model.encoder.frontend.proj.weight.grad.abs().sum() > 0
    _, no_ctc = make().loss(make()(features, lengths, labels, label_lengths), 0.1, 1.0)
    assert no_ctc["ctc"] == 0.0


@pytest.mark.parametrize("control", ["none", "reverse_encoder"])
def test_gradients_reach_every_hidden(control):
    model = make(control=control, control_block=2).eval()
    features, lengths, labels, label_lengths = batch()
    out = model(features, lengths, labels, label_lengths)
    log_probs = out.logits.log_softmax(-1).gather(-1, out.targets[..., None]).squeeze(-1)
    grads = torch.autograd.grad(log_probs[out.target_mask].sum(), out.encoder.hidden)
    for grad, hidden in zip(grads, out.encoder.hidden, strict=True):
        assert grad.shape == hidden.shape and grad.abs().sum() > 0


def test_deterministic_given_seed():
    features, lengths, labels, label_lengths = batch()
    a = make(seed=3).eval()(features, lengths, labels, label_lengths).logits
    b = make(seed=3).eval()(features, lengths, labels, label_lengths).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize("weight_feedback", [True, False])
def test_lstm_weight_feedback(weight_feedback):
    model = make(weight_feedback=weight_feedback)
    features, lengths, labels, label_lengths = batch()
    loss, _ = model.loss(model(features, lengths, labels, label_lengths), 0.0, 0.0)
    loss.backward()
    attention = model.decoder.attention
    if weight_feedback:  # the accumulated attention reaches the energies from the second label on
        assert attention.feedback.weight.grad.abs().sum() > 0
        assert model.decoder.fertility.weight.grad.abs().sum() > 0
    else:
        assert attention.feedback is None and model.decoder.fertility is None


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"pos_enc": "rel_xl", "ctc_layers": [1]},
        {"pos_enc": "abs+rel_shaw", "weight_feedback": False, "conv_norm": "batch"},
        {"decoder": "transformer", "attention_bias": False},
    ],
)
def test_weight_decay_is_chosen_by_what_a_parameter_is(overrides):
    """Decayed: the weight matrices and kernels of Linear, Conv and LSTM layers; the same parameters the rule
    by name chose (no decay on >= 2-D tensors named *embed* or *pos_bias*, nor on 1-D ones)."""
    from trainers.config import TrainConfig
    from trainers.train import _optimizer, decayed_weights

    model = make(**overrides)
    by_name = {
        name
        for name, p in model.named_parameters()
        if not (p.ndim < 2 or "embed" in name or "pos_bias" in name)
    }
    decayed = decayed_weights(model)
    assert {name for name, p in model.named_parameters() if p in decayed} == by_name
    optimizer = _optimizer(model, TrainConfig(weight_decay=0.01))
    for group in optimizer.param_groups:
        assert all((p in decayed) == (group["weight_decay"] > 0) for p in group["params"])
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))
