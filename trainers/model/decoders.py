"""The attention decoders of the AED: the paper's LSTM decoder (additive attention with weight feedback)
and a Transformer decoder. Both map previous labels and the encoder output to label logits and the
cross-attention weights the flip detector reads.

While the cross-attention is forced (`trainers.model.forcing`), a decoder returns both what it used (the
forced or blended weights) and its own learned weights, which the detector reads.

Shapes: B batch, S label positions (labels + EOS), T' encoder frames, D encoder width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainers.config import ModelConfig
from trainers.model.forcing import Forcing, forcing, learned_share
from trainers.model.layers import masked_softmax, sinusoids

READOUT_DROPOUT = 0.3  # the LSTM decoder's readout dropout in the paper's RETURNN setup (no config knob)
FERTILITY_SCALE = 0.5  # feedback accumulates this * sigmoid(fertility) * weights, as RETURNN's setups do


@dataclass
class DecoderOutput:
    logits: Tensor  # (B, S, V)
    attention: Tensor  # (B, S, T') the cross-attention the decoder used: forced, blended or learned
    learned_attention: Tensor  # (B, S, T') its own weights before forcing; `attention` itself when none


class _ScheduledDecoder(nn.Module):
    """What both decoders share: the forced cross-attention's schedule, read at the step of `set_step`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.set_step(None)

    def set_step(self, step: int | None) -> None:
        """Read the forced-attention schedule at training step `step` until the next call (None: its end)."""
        self.learned_share = learned_share(step, self.cfg)

    def forcing(self, enc_lengths: Tensor, frames: int) -> Forcing | None:
        return forcing(self.learned_share, enc_lengths, frames, self.cfg)


class AdditiveAttention(nn.Module):
    """energy_t = v . tanh(W_k h_t + W_q s + W_fb accum_t), softmax over valid frames (Bahdanau)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.key = nn.Linear(cfg.d_model, cfg.attention_dim)
        self.query = nn.Linear(cfg.decoder_dim, cfg.attention_dim, bias=False)
        self.feedback = nn.Linear(1, cfg.attention_dim, bias=False) if cfg.weight_feedback else None
        self.energy = nn.Linear(cfg.attention_dim, 1, bias=False)

    def forward(self, keys: Tensor, query: Tensor, accum: Tensor, mask: Tensor) -> Tensor:
        """keys (B, T', A) = W_k h (precomputed), query (B, Q), accum (B, T') -> weights (B, T')."""
        e = keys + self.query(query)[:, None, :]
        if self.feedback is not None:
            e = e + self.feedback(accum[:, :, None])
        return masked_softmax(self.energy(torch.tanh(e)).squeeze(-1), mask)


class LSTMDecoder(_ScheduledDecoder):
    """The paper's decoder: LSTM over [embedding of previous label, previous context], additive attention with
    weight feedback, readout Linear([s, context, embedding]) -> maxout(2) -> dropout -> Linear -> V.
    (No zoneout: the paper's LSTM has it, ModelConfig has no knob for it.)
    """

    def __init__(self, cfg: ModelConfig, *, vocab_size: int):
        super().__init__(cfg)
        enc_dim = cfg.d_model
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim)
        self.lstm = nn.LSTMCell(cfg.embed_dim + enc_dim, cfg.decoder_dim)
        self.attention = AdditiveAttention(cfg)
        self.fertility = nn.Linear(enc_dim, 1) if cfg.weight_feedback else None
        readout_dim = cfg.decoder_dim - cfg.decoder_dim % 2  # maxout needs pairs
        self.readout = nn.Linear(cfg.decoder_dim + enc_dim + cfg.embed_dim, readout_dim)
        self.readout_dropout = nn.Dropout(READOUT_DROPOUT)
        self.output = nn.Linear(readout_dim // 2, vocab_size)

    def forward(self, inputs: Tensor, enc: Tensor, enc_lengths: Tensor, enc_mask: Tensor) -> DecoderOutput:
        """inputs (B, S) previous labels, enc (B, T', D), enc_lengths (B,), enc_mask (B, T')."""
        b, s = inputs.shape
        forced = self.forcing(enc_lengths, enc.shape[1])
        embedded = self.embed(inputs)  # (B, S, E)
        keys = self.attention.key(enc)  # (B, T', A): once, outside the label loop
        inv_fertility = None
        if self.fertility is not None:
            inv_fertility = FERTILITY_SCALE * torch.sigmoid(self.fertility(enc).squeeze(-1))  # (B, T')
        state = enc.new_zeros(b, self.cfg.decoder_dim)
        cell = enc.new_zeros(b, self.cfg.decoder_dim)
        context = enc.new_zeros(b, enc.shape[-1])
        accum = enc.new_zeros(b, enc.shape[1])
        states, contexts, used, learned = [], [], [], []
        for i in range(s):
            state, cell = self.lstm(torch.cat([embedded[:, i], context], dim=-1), (state, cell))
            own = self.attention(keys, state, accum, enc_mask)
            weights = own if forced is None else forced.apply(own)
            context = (weights[:, :, None] * enc).sum(1)
            if inv_fertility is not None:
                accum = accum + weights * inv_fertility
            states.append(state)
            contexts.append(context)
            used.append(weights)
            learned.append(own)
        readout = torch.cat([torch.stack(states, 1), torch.stack(contexts, 1), embedded], dim=-1)
        readout = self.readout(readout)
        readout = readout.unflatten(-1, (-1, 2)).amax(-1)  # maxout, 2 pieces
        attention = torch.stack(used, 1)
        return DecoderOutput(
            logits=self.output(self.readout_dropout(readout)),
            attention=attention,
            learned_attention=attention if forced is None else torch.stack(learned, 1),
        )


class MultiHeadAttention(nn.Module):
    """Multi-head attention from (B, S, d) queries to (B, T', d) memory; returns weights (B, H, S, T')."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.decoder_dim
        self.heads, self.d_head = cfg.decoder_heads, d // cfg.decoder_heads
        self.query = nn.Linear(d, d)
        self.key_value = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.dropout = nn.Dropout(cfg.dropout)

    def _split(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.d_head).transpose(1, 2)

    def forward(
        self, x: Tensor, memory: Tensor, key_mask: Tensor, *, forced: Forcing | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """key_mask broadcasts to (B, H, S, T') -> output (B, S, d), the weights used (B, H, S, T'), and the
        learned weights before `forced` (the same tensor without it)."""
        q = self._split(self.query(x))
        k, v = (self._split(part) for part in self.key_value(memory).chunk(2, dim=-1))
        learned = masked_softmax((q @ k.transpose(-1, -2)) * self.d_head**-0.5, key_mask)
        weights = learned if forced is None else forced.apply(learned)
        context = (self.dropout(weights) @ v).transpose(1, 2).flatten(2)
        return self.out(context), weights, learned


class TransformerDecoderLayer(nn.Module):
    """Pre-LN: causal self-attention, cross-attention to the encoder, FFN (4x width, ReLU)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.decoder_dim
        self.self_norm, self.cross_norm, self.ffn_norm = (nn.LayerNorm(d) for _ in range(3))
        self.self_attention = MultiHeadAttention(cfg)
        self.cross_attention = MultiHeadAttention(cfg)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(4 * d, d))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, memory: Tensor, causal: Tensor, mask: Tensor, *, forced: Forcing | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, S, d), memory (B, T', d) -> (B, S, d), cross-attention weights used and learned
        (B, H, S, T')."""
        h = self.self_norm(x)
        x = x + self.dropout(self.self_attention(h, h, causal)[0])
        out, weights, learned = self.cross_attention(
            self.cross_norm(x), memory, mask[:, None, None, :], forced=forced
        )
        x = x + self.dropout(out)
        return x + self.dropout(self.ffn(self.ffn_norm(x))), weights, learned


class TransformerDecoder(_ScheduledDecoder):
    """Label embedding + sinusoidal positions, pre-LN layers, final LN, output Linear -> V."""

    def __init__(self, cfg: ModelConfig, *, vocab_size: int):
        super().__init__(cfg)
        d = cfg.decoder_dim
        self.embed = nn.Embedding(vocab_size, d)
        self.enc_proj = nn.Linear(cfg.d_model, d) if cfg.d_model != d else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(TransformerDecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(d)
        self.output = nn.Linear(d, vocab_size)

    def forward(self, inputs: Tensor, enc: Tensor, enc_lengths: Tensor, enc_mask: Tensor) -> DecoderOutput:
        """inputs (B, S), enc (B, T', D) -> logits and cross-attention (B, S, T') (mean: heads, layers)."""
        s = inputs.shape[1]
        forced = self.forcing(enc_lengths, enc.shape[1])
        x = self.embed(inputs) + sinusoids(torch.arange(s, device=inputs.device), self.embed.embedding_dim)
        x = self.dropout(x)
        memory = self.enc_proj(enc)
        causal = torch.ones(s, s, dtype=torch.bool, device=inputs.device).tril()
        used, learned = [], []
        for layer in self.layers:
            x, weights, own = layer(x, memory, causal, enc_mask, forced=forced)
            used.append(weights.mean(1))
            learned.append(own.mean(1))
        attention = torch.stack(used).mean(0)
        return DecoderOutput(
            logits=self.output(self.norm(x)),
            attention=attention,
            learned_attention=attention if forced is None else torch.stack(learned).mean(0),
        )
