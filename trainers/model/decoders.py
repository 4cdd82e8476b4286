"""The attention decoders of the AED: the paper's LSTM decoder (additive attention with weight feedback)
and a Transformer decoder. Both map previous labels and the encoder output to label logits and the
cross-attention weights the flip detector reads.

Shapes: B batch, S label positions (labels + EOS), T' encoder frames, D encoder width, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainers.config import ModelConfig
from trainers.model.layers import apply_center_attention, center_attention_lambda, masked_softmax, sinusoids


class AdditiveAttention(nn.Module):
    """energy_t = v . tanh(W_k h_t + W_q s + W_fb accum_t), softmax over valid frames (Bahdanau)."""

    def __init__(self, enc_dim: int, query_dim: int, att_dim: int, weight_feedback: bool):
        super().__init__()
        self.key = nn.Linear(enc_dim, att_dim)
        self.query = nn.Linear(query_dim, att_dim, bias=False)
        self.feedback = nn.Linear(1, att_dim, bias=False) if weight_feedback else None
        self.energy = nn.Linear(att_dim, 1, bias=False)

    def forward(self, keys: Tensor, query: Tensor, accum: Tensor, mask: Tensor) -> Tensor:
        """keys (B, T', A) = W_k h (precomputed), query (B, Q), accum (B, T') -> weights (B, T')."""
        e = keys + self.query(query)[:, None, :]
        if self.feedback is not None:
            e = e + self.feedback(accum[:, :, None])
        return masked_softmax(self.energy(torch.tanh(e)).squeeze(-1), mask)


class LSTMDecoder(nn.Module):
    """The paper's decoder: LSTM over [embedding of previous label, previous context], additive attention with
    weight feedback, readout Linear([s, context, embedding]) -> maxout(2) -> dropout 0.3 -> Linear -> V.
    (No zoneout: the paper's LSTM has it, ModelConfig has no knob for it.)
    """

    def __init__(self, cfg: ModelConfig, enc_dim: int, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim)
        self.lstm = nn.LSTMCell(cfg.embed_dim + enc_dim, cfg.decoder_dim)
        self.attention = AdditiveAttention(enc_dim, cfg.decoder_dim, cfg.attention_dim, cfg.weight_feedback)
        self.fertility = nn.Linear(enc_dim, 1) if cfg.weight_feedback else None
        readout_dim = cfg.decoder_dim - cfg.decoder_dim % 2  # maxout needs pairs
        self.readout = nn.Linear(cfg.decoder_dim + enc_dim + cfg.embed_dim, readout_dim)
        self.readout_dropout = nn.Dropout(0.3)
        self.output = nn.Linear(readout_dim // 2, vocab_size)

    def forward(
        self, inputs: Tensor, enc: Tensor, lengths: Tensor, mask: Tensor, step: int | None
    ) -> tuple[Tensor, Tensor]:
        """inputs (B, S) previous labels, enc (B, T', D) -> logits (B, S, V), cross-attention (B, S, T')."""
        b, s = inputs.shape
        lam = center_attention_lambda(step, self.cfg)
        embedded = self.embed(inputs)  # (B, S, E)
        keys = self.attention.key(enc)  # (B, T', A): once, outside the label loop
        inv_fertility = None
        if self.fertility is not None:
            inv_fertility = 0.5 * torch.sigmoid(self.fertility(enc).squeeze(-1))  # (B, T')
        state = enc.new_zeros(b, self.cfg.decoder_dim)
        cell = enc.new_zeros(b, self.cfg.decoder_dim)
        context = enc.new_zeros(b, enc.shape[-1])
        accum = enc.new_zeros(b, enc.shape[1])
        states, contexts, weights_all = [], [], []
        for i in range(s):
            state, cell = self.lstm(torch.cat([embedded[:, i], context], dim=-1), (state, cell))
            weights = apply_center_attention(self.attention(keys, state, accum, mask), lengths, lam)
            context = (weights[:, :, None] * enc).sum(1)
            if inv_fertility is not None:
                accum = accum + weights * inv_fertility
            states.append(state)
            contexts.append(context)
            weights_all.append(weights)
        readout = torch.cat([torch.stack(states, 1), torch.stack(contexts, 1), embedded], dim=-1)
        readout = self.readout(readout)
        readout = readout.unflatten(-1, (-1, 2)).amax(-1)  # maxout, 2 pieces
        return self.output(self.readout_dropout(readout)), torch.stack(weights_all, 1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention from (B, S, D) queries to (B, T', D) memory; returns weights (B, H, S, T')."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.d_head = heads, d // heads
        self.query = nn.Linear(d, d)
        self.key_value = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.d_head).transpose(1, 2)

    def forward(
        self, x: Tensor, memory: Tensor, key_mask: Tensor, lengths: Tensor | None = None, lam: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """key_mask broadcasts to (B, H, S, T'); with lengths given, centre attention blends in by `lam`."""
        q = self._split(self.query(x))
        k, v = (self._split(part) for part in self.key_value(memory).chunk(2, dim=-1))
        weights = masked_softmax((q @ k.transpose(-1, -2)) * self.d_head**-0.5, key_mask)
        if lengths is not None:
            weights = apply_center_attention(weights, lengths, lam)
        context = (self.dropout(weights) @ v).transpose(1, 2).flatten(2)
        return self.out(context), weights


class TransformerDecoderLayer(nn.Module):
    """Pre-LN: causal self-attention, cross-attention to the encoder, FFN (4x width, ReLU)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.self_norm, self.cross_norm, self.ffn_norm = (nn.LayerNorm(d) for _ in range(3))
        self.self_attention = MultiHeadAttention(d, heads, dropout)
        self.cross_attention = MultiHeadAttention(d, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(4 * d, d))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, memory: Tensor, causal: Tensor, mask: Tensor, lengths: Tensor, lam: float
    ) -> tuple[Tensor, Tensor]:
        """x (B, S, d), memory (B, T', d) -> (B, S, d), cross-attention weights (B, H, S, T')."""
        h = self.self_norm(x)
        x = x + self.dropout(self.self_attention(h, h, causal)[0])
        out, weights = self.cross_attention(self.cross_norm(x), memory, mask[:, None, None, :], lengths, lam)
        x = x + self.dropout(out)
        return x + self.dropout(self.ffn(self.ffn_norm(x))), weights


class TransformerDecoder(nn.Module):
    """Label embedding + sinusoidal positions, pre-LN layers, final LN, output Linear -> V."""

    def __init__(self, cfg: ModelConfig, enc_dim: int, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        d = cfg.decoder_dim
        self.embed = nn.Embedding(vocab_size, d)
        self.enc_proj = nn.Linear(enc_dim, d) if enc_dim != d else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(d, cfg.decoder_heads, cfg.dropout) for _ in range(cfg.decoder_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.output = nn.Linear(d, vocab_size)

    def forward(
        self, inputs: Tensor, enc: Tensor, lengths: Tensor, mask: Tensor, step: int | None
    ) -> tuple[Tensor, Tensor]:
        """inputs (B, S), enc (B, T', D) -> logits (B, S, V), attention (B, S, T') (mean: heads, layers)."""
        s = inputs.shape[1]
        lam = center_attention_lambda(step, self.cfg)
        x = self.embed(inputs) + sinusoids(torch.arange(s, device=inputs.device), self.embed.embedding_dim)
        x = self.dropout(x)
        memory = self.enc_proj(enc)
        causal = torch.ones(s, s, dtype=torch.bool, device=inputs.device).tril()
        weights = []
        for layer in self.layers:
            x, w = layer(x, memory, causal, mask, lengths, lam)
            weights.append(w.mean(1))
        return self.output(self.norm(x)), torch.stack(weights).mean(0)
