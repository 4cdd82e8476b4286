"""The Conformer block (Gulati et al., 2020) in the paper's pre-LN Macaron form, one module per part:
x += s*FFN1(LN x); x += m*MHSA(LN x); x += Conv(LN x); x += s*FFN2(LN x); out = LN(x).

Self-attention takes the positional scheme of `model.pos_enc` (Shaw relative positions clipped at
`rel_clip`, Transformer-XL, RoPE, or none); the convolution module's norm is LayerNorm or a BatchNorm whose
statistics see only valid frames; `pad_mode: zero` zeroes padded frames before the depthwise convolution
(RETURNN's default leaves them un-masked). The block can report its MHSA, FFN and residual norms: the
paper's "dominance" check. The block and each of its parts are built from the model's config alone.

Shapes: B batch, T frames, D d_model, H heads, d head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.config import ModelConfig
from trainers.model.layers import Dropout, masked_mean_norm, masked_softmax, rotary, sinusoids


class FeedForward(nn.Module):
    """Linear D -> ffn_dim, swish or ReLU^2, dropout, Linear -> D, dropout. (B, T, D) -> (B, T, D)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.ffn_dim)
        self.down = nn.Linear(cfg.ffn_dim, cfg.d_model)
        self.activation = cfg.ffn_activation
        self.dropout = Dropout(cfg.dropout, broadcast=cfg.dropout_broadcast)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)
        h = F.silu(h) if self.activation == "swish" else torch.relu(h).square()
        return self.dropout(self.down(self.dropout(h)))


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with the configured positional scheme; scores scaled by 1/sqrt(d_head).

    rel_shaw: a learned table of 2*clip+1 vectors of size d_head, shared over heads, adds q_i . r_{clip(j-i)}
    to the logits (key term only, no biases: the paper's setting). rel_xl: Transformer-XL, sinusoidal offsets
    through a linear projection plus the learned biases u (content) and v (position). rope: rotary q and k.
    With `mixing=False` (the self-attention-off mitigation) a frame gets only out(value(x)), no mixing.
    `attention_bias: false` (the paper's) leaves q/k/v/out without biases.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d_model, heads = cfg.d_model, cfg.heads
        self.heads, self.d_head = heads, d_model // heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=cfg.attention_bias)
        self.out = nn.Linear(d_model, d_model, bias=cfg.attention_bias)
        self.att_dropout = nn.Dropout(cfg.att_dropout)  # on (B, H, T, T) weights: per element, as in RETURNN
        self.dropout = Dropout(cfg.dropout, broadcast=cfg.dropout_broadcast)
        self.shaw = cfg.pos_enc in ("rel_shaw", "abs+rel_shaw")
        self.xl = cfg.pos_enc == "rel_xl"
        self.rope = cfg.pos_enc == "rope"
        self.rel_clip = cfg.rel_clip
        if self.shaw:
            self.pos_embed = nn.Parameter(torch.randn(2 * self.rel_clip + 1, self.d_head) * self.d_head**-0.5)
        if self.xl:
            self.pos_proj = nn.Linear(d_model, d_model, bias=False)
            self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.d_head))
            self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.d_head))

    def _split(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.d_head).transpose(1, 2)  # (B, H, T, d)

    def _relative_offsets(self, t: int, device: torch.device) -> Tensor:
        """(T, T) offsets j - i of key j from query i."""
        pos = torch.arange(t, device=device)
        return pos[None, :] - pos[:, None]

    def forward(self, x: Tensor, mask: Tensor, *, mixing: bool = True) -> tuple[Tensor, Tensor]:
        """x (B, T, D) (already layer-normed), mask (B, T) -> output (B, T, D), weights (B, H, T, T)."""
        b, t, d = x.shape
        if not mixing:
            bias = None if self.qkv.bias is None else self.qkv.bias[2 * d :]
            value = F.linear(x, self.qkv.weight[2 * d :], bias)
            eye = torch.eye(t, device=x.device, dtype=x.dtype).expand(b, self.heads, t, t)
            return self.dropout(self.out(value)), eye
        q, k, v = (self._split(part) for part in self.qkv(x).chunk(3, dim=-1))
        if self.rope:
            q, k = rotary(q), rotary(k)
        if self.xl:
            scores = (q + self.pos_bias_u[:, None]) @ k.transpose(-1, -2)
            # One projected sinusoid per offset in -(T-1)..T-1, then each (i, j) gathers its offset j - i.
            offsets = torch.arange(-(t - 1), t, device=x.device)
            pos = self.pos_proj(sinusoids(offsets, d).to(x.dtype)).view(2 * t - 1, self.heads, self.d_head)
            by_offset = torch.einsum("bhid,khd->bhik", q + self.pos_bias_v[:, None], pos)  # (B, H, T, 2T-1)
            index = (self._relative_offsets(t, x.device) + t - 1).expand(b, self.heads, t, t)
            scores = scores + by_offset.gather(-1, index)
        else:
            scores = q @ k.transpose(-1, -2)
        if self.shaw:
            by_offset = q @ self.pos_embed.transpose(0, 1)  # (B, H, T, 2*clip+1)
            clipped = self._relative_offsets(t, x.device).clamp(-self.rel_clip, self.rel_clip) + self.rel_clip
            scores = scores + by_offset.gather(-1, clipped.expand(b, self.heads, t, t))
        weights = masked_softmax(scores * self.d_head**-0.5, mask[:, None, None, :])
        context = (self.att_dropout(weights) @ v).transpose(1, 2).reshape(b, t, d)
        return self.dropout(self.out(context)), weights


class MaskedBatchNorm(nn.Module):
    """BatchNorm over (B, T, D) whose statistics use valid frames only; running statistics for eval."""

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.momentum, self.eps = momentum, eps

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if self.training:
            m = mask[:, :, None].to(x.dtype)
            n = m.sum().clamp_min(1)
            mean = (x * m).sum((0, 1)) / n
            var = ((x - mean).square() * m).sum((0, 1)) / n
            with torch.no_grad():
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_mean.lerp_(mean.float(), self.momentum)
                self.running_var.lerp_(unbiased.float(), self.momentum)
        else:
            mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class ConvModule(nn.Module):
    """Pointwise D -> 2D, GLU, depthwise conv in time ('same' length), norm, swish, pointwise D -> D."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d_model, kernel = cfg.d_model, cfg.conv_kernel
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, groups=d_model)
        self.padding = (kernel // 2, (kernel - 1) // 2)  # 'same' also for even kernels
        self.batch_norm = cfg.conv_norm == "batch"
        self.norm = MaskedBatchNorm(d_model) if self.batch_norm else nn.LayerNorm(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = Dropout(cfg.dropout, broadcast=cfg.dropout_broadcast)
        self.zero_pad = cfg.pad_mode == "zero"

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, D), mask (B, T) -> (B, T, D)."""
        x = F.glu(self.pointwise_in(x), dim=-1)
        if self.zero_pad:
            x = x * mask[:, :, None].to(x.dtype)
        x = self.depthwise(F.pad(x.transpose(1, 2), self.padding)).transpose(1, 2)
        x = self.norm(x, mask) if self.batch_norm else self.norm(x)
        return self.dropout(self.pointwise_out(F.silu(x)))


class ConformerBlock(nn.Module):
    """Pre-LN Macaron: x += s*FFN1(LN x); x += m*MHSA(LN x); x += Conv(LN x); x += s*FFN2(LN x); LN(x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.ffn_scale = cfg.ffn_scale
        self.ffn1_norm, self.att_norm, self.conv_norm, self.ffn2_norm, self.out_norm = (
            nn.LayerNorm(d) for _ in range(5)
        )
        self.ffn1 = FeedForward(cfg)
        self.ffn2 = FeedForward(cfg)
        self.attention = MultiHeadSelfAttention(cfg)
        self.conv = ConvModule(cfg)

    def forward(
        self, x: Tensor, mask: Tensor, *, mixing: bool = True, collect: bool = False, mhsa_scale: float = 1.0
    ) -> tuple[Tensor, Tensor | None, dict[str, float] | None]:
        """x (B, T', D), mask (B, T') -> (B, T', D), and when collecting the attention weights and the
        dominance norms. `mixing: false` = self-attention off (a mitigation); `mhsa_scale` scales the MHSA
        branch (the paper's dominance, imposed)."""
        ffn1 = self.ffn_scale * self.ffn1(self.ffn1_norm(x))
        x = x + ffn1
        mhsa, weights = self.attention(self.att_norm(x), mask, mixing=mixing)
        mhsa = mhsa_scale * mhsa
        norms = None
        if collect:
            # The paper's "dominance" check: a large MHSA output swamps the residual it is added to.
            parts = {"ffn1": ffn1, "mhsa": mhsa, "residual": x}
            norms = {name: masked_mean_norm(part, mask) for name, part in parts.items()}
        x = x + mhsa
        x = x + self.conv(self.conv_norm(x), mask)
        x = x + self.ffn_scale * self.ffn2(self.ffn2_norm(x))
        return self.out_norm(x), (weights if collect else None), norms
