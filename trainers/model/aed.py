"""A Conformer attention-encoder-decoder (AED) ASR model, small enough to train on a CPU.

The architecture follows Schmitt et al., "The Conformer Encoder May Reverse the Time Dimension" (ICASSP
2025): a convolutional frontend (`frontend`), pre-LN Macaron Conformer blocks with a per-block final LayerNorm
(`conformer`, `encoder`), and an LSTM decoder with additive attention and weight feedback (`decoders`). Every
knob lives in `ModelConfig`; the mitigations the paper tests (self-attention off early, forced centre-frame
cross-attention, CTC auxiliary losses), the interventions that impose its mechanism (cross-attention forced
onto the first frames, a scaled MHSA branch) and a detector control (`reverse_encoder`) are switched there.

Schedules (self-attention off, MHSA scale, forced cross-attention) are read at the training step given to
`set_step`, once per step, by the trial before training and by whoever reads the model at a step; a fresh
model reads them at their end (step None), as a trained model does.

Shapes: B batch, T input frames, T' encoder frames, F features, D d_model, S label positions
(labels + EOS), V vocabulary (EOS = BOS = 0 included).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.config import ModelConfig
from trainers.corpus import EOS
from trainers.model.decoders import LSTMDecoder, TransformerDecoder
from trainers.model.encoder import ConformerEncoder, EncoderOutput
from trainers.model.layers import lengths_to_mask


@dataclass
class AEDOutput:
    logits: Tensor  # (B, S, V)
    targets: Tensor  # (B, S) int64: labels, EOS, then 0 padding
    target_mask: Tensor  # (B, S) bool, True for labels and the one EOS
    cross_attention: Tensor  # (B, S, T') weights the decoder used (forced while forcing), 0 on padding
    # (B, S, T') the decoder's own weights before forcing: what the flip detector reads. The same tensor as
    # cross_attention whenever nothing is forced.
    learned_attention: Tensor
    encoder: EncoderOutput
    ctc_logits: dict[int, Tensor]  # block (1-based) -> (B, T', V+1), blank = V


class ConformerAED(nn.Module):
    """Conformer encoder + attention decoder (LSTM or Transformer) + optional CTC heads on chosen blocks."""

    def __init__(self, cfg: ModelConfig, feature_dim: int, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.encoder = ConformerEncoder(cfg, feature_dim=feature_dim)
        decoder = LSTMDecoder if cfg.decoder == "lstm" else TransformerDecoder
        self.decoder = decoder(cfg, vocab_size=vocab_size)
        # One extra class: the CTC blank is the last index, V.
        self.ctc_heads = nn.ModuleDict(
            {str(b): nn.Linear(cfg.d_model, vocab_size + 1) for b in cfg.ctc_layers}
        )
        if cfg.init == "returnn":
            returnn_init(self)
        self.step: int | None = None

    def set_step(self, step: int | None) -> None:
        """Read every schedule at training step `step` until the next call; None: their end (trained)."""
        self.step = step
        self.encoder.set_step(step)
        self.decoder.set_step(step)

    def encode(self, features: Tensor, feature_lengths: Tensor, *, collect: bool = False) -> EncoderOutput:
        """features (B, T, F) -> EncoderOutput (hidden: L+1 tensors (B, T', D))."""
        return self.encoder(features, feature_lengths, collect=collect)

    def forward(
        self,
        features: Tensor,
        feature_lengths: Tensor,
        labels: Tensor,
        label_lengths: Tensor,
        *,
        collect: bool = False,
    ) -> AEDOutput:
        """Teacher-forced pass: decoder input [BOS, a_1..a_N], targets [a_1..a_N, EOS]; S = max(N) + 1.
        features (B, T, F), feature_lengths (B,), labels (B, N), label_lengths (B,); `collect` adds the
        encoder's self-attention and dominance norms."""
        return self.decode(self.encode(features, feature_lengths, collect=collect), labels, label_lengths)

    def decode(self, enc: EncoderOutput, labels: Tensor, label_lengths: Tensor) -> AEDOutput:
        """The teacher-forced decoder (and CTC heads) on an encoder output; labels (B, N), lengths (B,)."""
        n = int(label_lengths.max())
        target_mask = lengths_to_mask(label_lengths + 1, n + 1)
        labels = labels[:, :n] * target_mask[:, :n]  # padding -> 0, whatever the caller padded with
        targets = F.pad(labels, (0, 1), value=EOS)  # (B, S): the EOS lands at position N_b, 0 after it
        inputs = F.pad(labels, (1, 0), value=EOS)  # (B, S): BOS first
        decoded = self.decoder(inputs, enc.hidden[-1], enc.lengths, enc.mask)
        ctc_logits = {int(b): head(enc.hidden[int(b)]) for b, head in self.ctc_heads.items()}
        return AEDOutput(
            logits=decoded.logits,
            targets=targets,
            target_mask=target_mask,
            cross_attention=decoded.attention,
            learned_attention=decoded.learned_attention,
            encoder=enc,
            ctc_logits=ctc_logits,
        )

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
