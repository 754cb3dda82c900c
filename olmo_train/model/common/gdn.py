"""The Gated DeltaNet token mixer (OLMo Hybrid's linear-attention layer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from olmo_train.model import ops
from olmo_train.model.common.init import InitSpec
from olmo_train.model.common.norm import GatedRMSNorm

OUTPUT_NORM_EPS = 1e-5  # fixed by the released model / HF format (fla's gated norm default)


class ShortConv(nn.Module):
    """Weights of the depthwise causal convolution over concatenated q, k, v: [C, 1, W] (nn.Conv1d's layout)."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 1, width))

    def init_spec(self, name: str) -> InitSpec:
        bound = self.weight.shape[-1] ** -0.5  # PyTorch's default for a depthwise conv (fan_in = W)
        return InitSpec(kind="uniform", low=-bound, high=bound)

    def forward(self, x: torch.Tensor, packing: ops.Packing | None) -> torch.Tensor:  # [B, T, C] -> [B, T, C]
        return ops.short_conv(x, self.weight[:, 0], packing)


class GatedDeltaNet(nn.Module):
    """q, k, v projections through a causal conv + SiLU; q, k L2-normalised (in the kernel); beta = (2 *)
    sigmoid(b(x)); g = -exp(A_log) * softplus(a(x) + dt_bias) in float32; gated RMSNorm per head; o_proj."""

    def __init__(self, d_model: int, n_heads: int, n_v_heads: int, head_k_dim: int, head_v_dim: int,
                 conv_size: int, allow_neg_eigval: bool, a_log_range: tuple[float, float],
                 dt_range: tuple[float, float], dt_floor: float) -> None:
        super().__init__()
        self.n_heads, self.n_v_heads = n_heads, n_v_heads
        self.head_k_dim, self.head_v_dim = head_k_dim, head_v_dim
        self.allow_neg_eigval = allow_neg_eigval
        self._a_log_range, self._dt_range, self._dt_floor = a_log_range, dt_range, dt_floor
        key_dim, value_dim = n_heads * head_k_dim, n_v_heads * head_v_dim
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.a_proj = nn.Linear(d_model, n_v_heads, bias=False)
        self.b_proj = nn.Linear(d_model, n_v_heads, bias=False)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)
        self.conv1d = ShortConv(2 * key_dim + value_dim, conv_size)
        self.A_log = nn.Parameter(torch.empty(n_v_heads))
        self.dt_bias = nn.Parameter(torch.empty(n_v_heads))
        self.o_norm = GatedRMSNorm(head_v_dim, OUTPUT_NORM_EPS)

    def init_spec(self, name: str) -> InitSpec:
        if name == "A_log":
            return InitSpec(kind="a_log", low=self._a_log_range[0], high=self._a_log_range[1])
        assert name == "dt_bias", name
        return InitSpec(kind="dt_bias", low=self._dt_range[0], high=self._dt_range[1], floor=self._dt_floor)

    def forward(self, x: torch.Tensor, packing: ops.Packing | None) -> torch.Tensor:  # [B, T, D] -> [B, T, D]
        B, T, _ = x.shape
        key_dim = self.n_heads * self.head_k_dim
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)  # [B, T, 2 Kd + Vd]
        q, k, v = self.conv1d(qkv, packing).split([key_dim, key_dim, qkv.shape[-1] - 2 * key_dim], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_k_dim)
        k = k.view(B, T, self.n_heads, self.head_k_dim)
        v = v.view(B, T, self.n_v_heads, self.head_v_dim)
        beta = self.b_proj(x).sigmoid()  # [B, T, HV]
        if self.allow_neg_eigval:
            beta = beta * 2.0
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias)  # [B, T, HV] fp32
        o = ops.gated_delta_rule(q, k, v, g, beta, packing)  # [B, T, HV, Vh]
        gate = self.g_proj(x).view(B, T, self.n_v_heads, self.head_v_dim)
        o = self.o_norm(o, gate)
        return self.o_proj(o.reshape(B, T, -1))
