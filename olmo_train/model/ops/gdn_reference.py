"""The oracle: the gated delta rule token by token, in float64. Slow; for tests only."""

from __future__ import annotations

import torch

from olmo_train.model.ops.gdn_torch import l2norm


def recurrent_gated_delta_rule_f64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                                   beta: torch.Tensor, *, scale: float | None = None, l2norm_qk: bool = True,
                                   cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """Same contract as `gdn_torch.chunk_gated_delta_rule`; returns float64 [B, T, HV, V]. Differentiable."""
    B, T, H, K = q.shape
    HV, V = v.shape[2:]
    q, k, v, g, beta = (x.double() for x in (q, k, v, g, beta))
    if HV != H:
        q, k = (x.repeat_interleave(HV // H, dim=2) for x in (q, k))
    if l2norm_qk:
        q, k = l2norm(q), l2norm(k)
    q = q * (K ** -0.5 if scale is None else scale)
    bounds = [0, T] if cu_seqlens is None else cu_seqlens.tolist()
    starts = set(bounds[:-1])
    outs = []
    state = q.new_zeros(B, HV, K, V)
    for t in range(T):
        if t in starts:
            state = q.new_zeros(B, HV, K, V)
        state = state * g[:, t].exp()[..., None, None]  # [B, HV, K, V]
        predicted = torch.einsum("bhkv,bhk->bhv", state, k[:, t])
        write = (v[:, t] - predicted) * beta[:, t, :, None]  # [B, HV, V]
        state = state + k[:, t, :, :, None] * write[:, :, None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", state, q[:, t]))
    return torch.stack(outs, dim=1)
