"""Multi-head causal self-attention with QK-norm over the whole projections and optional RoPE."""

from __future__ import annotations

import torch
from torch import nn

from olmo_train.model import ops
from olmo_train.model.common.norm import RMSNorm
from olmo_train.model.common.rope import apply_rope, rope_tables


class Attention(nn.Module):
    """q = norm(Wq x), k = norm(Wk x) (RMSNorm over all heads at once), RoPE on q and k unless `rope_theta` is
    None (NoPE), causal SDPA, Wo."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, norm_eps: float,
                 rope_theta: float | None) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.rope_theta = rope_theta
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)
        self.q_norm = RMSNorm(n_heads * head_dim, norm_eps)
        self.k_norm = RMSNorm(n_kv_heads * head_dim, norm_eps)

    def forward(self, x: torch.Tensor, packing: ops.Packing | None,
                positions: torch.Tensor) -> torch.Tensor:  # [B, T, D], positions [B or 1, T] -> [B, T, D]
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x)).view(B, T, self.n_heads, self.head_dim)
        k = self.k_norm(self.k_proj(x)).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.rope_theta is not None:
            # tables from integer positions here, in float32 (a bf16 cast of the inputs cannot reach them)
            cos, sin = rope_tables(positions, self.head_dim, self.rope_theta)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = ops.causal_attention(q, k, v, packing, scale=self.head_dim ** -0.5)  # [B, T, H, Dh]
        return self.o_proj(o.reshape(B, T, self.n_heads * self.head_dim))
