"""A Conformer attention-encoder-decoder (AED) ASR model, small enough to train on a CPU.

The architecture follows Schmitt et al., "The Conformer Encoder May Reverse the Time Dimension" (ICASSP
2025): a convolutional frontend, pre-LN Macaron Conformer blocks with a per-block final LayerNorm, and an LSTM
decoder with additive attention and weight feedback. Every knob lives in `ModelConfig`; the mitigations the
paper tests (self-attention off early, hard centre-frame cross-attention, CTC auxiliary losses) and a detector
control (`reverse_encoder`) are switched there.

Shapes: B batch, T input frames, T' encoder frames, F features, D d_model, H heads, S label positions
(labels + EOS), V vocabulary (EOS = BOS = 0 included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.config import ModelConfig
from trainers.corpus import EOS
from trainers.model.conformer import ConformerBlock
from trainers.model.decoders import LSTMDecoder, TransformerDecoder
from trainers.model.layers import Dropout, lengths_to_mask, sinusoids

FRONTEND_TIME_STRIDES: dict[int, tuple[int, int, int]] = {4: (1, 2, 2), 6: (1, 3, 2)}


# ----------------------------------------------------------------------------------------------------------
# Outputs


@dataclass
class EncoderOutput:
    hidden: list[Tensor]  # L+1 live tensors (B, T', D): encoder input, then the output of each block
    lengths: Tensor  # (B,) int64 valid encoder frames
    mask: Tensor  # (B, T') bool, True = valid frame
    self_attention: list[Tensor] | None = None  # collect only: per block (B, H, T', T')
    block_norms: list[dict[str, float]] | None = None  # collect only: per block {"ffn1", "mhsa", "residual"}


@dataclass
class AEDOutput:
    logits: Tensor  # (B, S, V)
    targets: Tensor  # (B, S) int64: labels, EOS, then 0 padding
    target_mask: Tensor  # (B, S) bool, True for labels and the one EOS
    cross_attention: Tensor  # (B, S, T') weights over encoder frames, 0 on padding
    encoder: EncoderOutput
    ctc_logits: dict[int, Tensor]  # block (1-based) -> (B, T', V+1), blank = V


# ----------------------------------------------------------------------------------------------------------
# Helpers


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


def reverse_valid_frames(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each utterance's valid frames in time; padding stays at the end. x (B, T', D).

    This exists ONLY as a detector control (`control="reverse_encoder"`): it builds a model that is
    time-reversed by construction, so the flip detector can be checked against a known answer. Never natural.
    """
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, T')
    return x.gather(1, index[:, :, None].expand_as(x))


# ----------------------------------------------------------------------------------------------------------
# Frontend


class ConvFrontend(nn.Module):
    """Three 3x3 conv2d layers over (time, feature) with ReLU, then a linear projection to D.

    Time strides (1, 2, 2) give 4x subsampling, (1, 3, 2) the paper's 6x; max-pool by 2 on the feature axis
    after conv1. With `zero_pad`, padded frames are zeroed before every convolution so they cannot leak into
    valid ones.
    """

    def __init__(
        self,
        feature_dim: int,
        channels: int,
        d_model: int,
        subsampling: int,
        dropout: float,
        zero_pad: bool,
        broadcast: bool = False,
    ):
        super().__init__()
        self.strides = FRONTEND_TIME_STRIDES[subsampling]
        self.convs = nn.ModuleList(
            nn.Conv2d(1 if i == 0 else channels, channels, 3, stride=(s, 1), padding=1)
            for i, s in enumerate(self.strides)
        )
        self.proj = nn.Linear(channels * (feature_dim // 2), d_model, bias=False)
        self.dropout = Dropout(dropout, broadcast)
        self.zero_pad = zero_pad

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """features (B, T, F), lengths (B,) -> (B, T', D), (B,) subsampled lengths."""
        x = features.unsqueeze(1)  # (B, 1, T, F)
        for i, (conv, stride) in enumerate(zip(self.convs, self.strides, strict=True)):
            if self.zero_pad:
                x = x * lengths_to_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
            x = conv(x)
            if i == 0:
                x = pool_feature_pairs(x)
            x = torch.relu(x)
            lengths = (lengths + stride - 1) // stride
        x = x.permute(0, 2, 1, 3).flatten(2)  # (B, T', C * F')
        return self.dropout(self.proj(x)), lengths


class ConformerEncoder(nn.Module):
    """Frontend, optional absolute positions, then L Conformer blocks. Returns every block's output."""

    def __init__(self, cfg: ModelConfig, feature_dim: int):
        super().__init__()
        self.cfg = cfg
        zero_pad = cfg.pad_mode == "zero"
        self.frontend = ConvFrontend(
            feature_dim,
            cfg.frontend_channels,
            cfg.d_model,
            cfg.subsampling,
            cfg.dropout,
            zero_pad,
            cfg.dropout_broadcast,
        )
        self.blocks = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.layers))

    def mhsa_scale_at(self, step: int | None) -> float:
        """The MHSA residual scale of blocks >= mhsa_scale_from at `step` (None: the end of the schedule)."""
        schedule = self.cfg.mhsa_scale_schedule
        if not schedule:
            return self.cfg.mhsa_scale
        if step is None:
            return schedule[-1][1]
        steps, scales = zip(*schedule, strict=True)
        return float(np.interp(step, steps, scales))

    def embed(self, features: Tensor, feature_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """features (B, T, F) -> the encoder input h_0 (B, T', D) and its lengths (B,): the frontend, then
        absolute positions if configured (added to x * sqrt(D) with `abs_pos_xscale`, the paper's v6)."""
        x, lengths = self.frontend(features, feature_lengths)
        if self.cfg.pos_enc in ("abs", "abs+rel_shaw"):
            if self.cfg.abs_pos_xscale:
                x = x * math.sqrt(x.shape[-1])
            x = x + sinusoids(torch.arange(x.shape[1], device=x.device), x.shape[-1]).to(x.dtype)
        return x, lengths

    def forward(
        self, features: Tensor, feature_lengths: Tensor, step: int | None = None, collect: bool = False
    ) -> EncoderOutput:
        """features (B, T, F), feature_lengths (B,) -> EncoderOutput with hidden (B, T', D) x (L+1)."""
        return self.run_blocks(*self.embed(features, feature_lengths), step=step, collect=collect)

    def run_blocks(
        self, x: Tensor, lengths: Tensor, step: int | None = None, collect: bool = False
    ) -> EncoderOutput:
        """The Conformer blocks on the encoder input x = h_0 (B, T', D) with valid lengths (B,)."""
        mask = lengths_to_mask(lengths, x.shape[1])
        mixing = step is None or step >= self.cfg.self_attention_off_steps
        reverse_at = self.cfg.control_block if self.cfg.control == "reverse_encoder" else None
        mhsa_scale = self.mhsa_scale_at(step)
        hidden, attention, norms = [x], [], []
        for i, block in enumerate(self.blocks, start=1):
            if i == reverse_at:
                x = reverse_valid_frames(x, lengths)  # control only; hidden[i - 1] keeps the unreversed input
            scale = mhsa_scale if i >= self.cfg.mhsa_scale_from else 1.0
            x, weights, block_norms = block(x, mask, mixing, collect, scale)
            hidden.append(x)
            attention.append(weights)
            norms.append(block_norms)
        return EncoderOutput(
            hidden=hidden,
            lengths=lengths,
            mask=mask,
            self_attention=attention if collect else None,
            block_norms=norms if collect else None,
        )


# ----------------------------------------------------------------------------------------------------------
# The model


class ConformerAED(nn.Module):
    """Conformer encoder + attention decoder (LSTM or Transformer) + optional CTC heads on chosen blocks."""

    def __init__(self, cfg: ModelConfig, feature_dim: int, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.encoder = ConformerEncoder(cfg, feature_dim)
        decoder = LSTMDecoder if cfg.decoder == "lstm" else TransformerDecoder
        self.decoder = decoder(cfg, cfg.d_model, vocab_size)
        # One extra class: the CTC blank is the last index, V.
        self.ctc_heads = nn.ModuleDict(
            {str(b): nn.Linear(cfg.d_model, vocab_size + 1) for b in cfg.ctc_layers}
        )
        if cfg.init == "returnn":
            returnn_init(self)

    def encode(
        self, features: Tensor, feature_lengths: Tensor, step: int | None = None, collect: bool = False
    ) -> EncoderOutput:
        """features (B, T, F) -> EncoderOutput (hidden: L+1 tensors (B, T', D))."""
        return self.encoder(features, feature_lengths, step, collect)

    def forward(
        self,
        features: Tensor,
        feature_lengths: Tensor,
        labels: Tensor,
        label_lengths: Tensor,
        step: int | None = None,
        collect: bool = False,
    ) -> AEDOutput:
        """Teacher-forced pass: decoder input [BOS, a_1..a_N], targets [a_1..a_N, EOS]; S = max(N) + 1."""
        return self.decode(self.encode(features, feature_lengths, step, collect), labels, label_lengths, step)

    def decode(
        self, enc: EncoderOutput, labels: Tensor, label_lengths: Tensor, step: int | None = None
    ) -> AEDOutput:
        """The teacher-forced decoder (and CTC heads) on an encoder output; labels (B, N), lengths (B,)."""
        n = int(label_lengths.max())
        target_mask = lengths_to_mask(label_lengths + 1, n + 1)
        labels = labels[:, :n] * target_mask[:, :n]  # padding -> 0, whatever the caller padded with
        targets = F.pad(labels, (0, 1), value=EOS)  # (B, S): the EOS lands at position N_b, 0 after it
        inputs = F.pad(labels, (1, 0), value=EOS)  # (B, S): BOS first
        logits, cross_attention = self.decoder(inputs, enc.hidden[-1], enc.lengths, enc.mask, step)
        ctc_logits = {int(b): head(enc.hidden[int(b)]) for b, head in self.ctc_heads.items()}
        return AEDOutput(logits, targets, target_mask, cross_attention, enc, ctc_logits)

    def loss(
        self, out: AEDOutput, label_smoothing: float, ctc_scale: float
    ) -> tuple[Tensor, dict[str, float]]:
        """CE (label-smoothed, mean over real targets) + ctc_scale * each CTC loss (summed / #labels).

        Returns (total, {"ce", "ctc" (sum of the unscaled CTC losses, 0.0 if none), "accuracy"}).
        """
        logits, targets = out.logits[out.target_mask].float(), out.targets[out.target_mask]
        ce = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        label_lengths = out.target_mask.sum(1) - 1
        ctc_total = logits.new_zeros(())
        for ctc_logits in out.ctc_logits.values():
            log_probs = ctc_logits.float().log_softmax(-1).transpose(0, 1)  # (T', B, V+1)
            ctc = F.ctc_loss(
                log_probs,
                out.targets,
                out.encoder.lengths,
                label_lengths,
                blank=self.vocab_size,
                reduction="sum",
                zero_infinity=True,
            )
            ctc_total = ctc_total + ctc / label_lengths.sum().clamp_min(1)  # per label, like the CE
        accuracy = (logits.argmax(-1) == targets).float().mean()
        total = ce + ctc_scale * ctc_total
        stats = {"ce": ce.detach().item(), "ctc": ctc_total.detach().item(), "accuracy": accuracy.item()}
        return total, stats


def returnn_init(model: nn.Module) -> None:
    """RETURNN frontend's default initialisation, which the paper's models had: Glorot (Xavier) uniform for
    every weight matrix, convolution kernel, embedding table and learned position table, zero biases; norms
    keep weight 1 and bias 0. (PyTorch's defaults, uniform +-1/sqrt(fan_in) with random biases and N(0, 1)
    embeddings, start the MHSA and FFN branches much smaller relative to the residual.)
    The learned relative-position table has no explicit initial value in RETURNN; we take its Glorot default.
    """
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("bias") or "pos_bias" in name:
                nn.init.zeros_(parameter)  # incl. LSTM bias_ih/bias_hh and Transformer-XL u, v
            elif parameter.ndim >= 2:
                nn.init.xavier_uniform_(parameter)  # norm weights (1-D) keep 1
