"""Causal softmax attention: SDPA for whole rows, varlen flash attention (CUDA) or a block mask for documents."""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

from olmo_train.model.ops.packing import Packing

_FLASH_DTYPES = (torch.float16, torch.bfloat16)  # varlen (flash) attention refuses float32: it takes the mask path


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing | None, *,
                     scale: float) -> torch.Tensor:
    """q [B, T, H, D], k and v [B, T, Hkv, D] -> [B, T, H, D]; no token sees another document's tokens."""
    B, T, H, D = q.shape
    if packing is not None and q.is_cuda and q.dtype in _FLASH_DTYPES and _varlen_kwargs() is not None:
        return _varlen(q, k, v, packing, scale).view(B, T, H, D)
    q_, k_, v_ = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, T, D]
    gqa = k.shape[2] != H
    if packing is None:
        o = F.scaled_dot_product_attention(q_, k_, v_, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        ids = packing.doc_ids
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        mask = (ids[:, :, None] == ids[:, None, :]) & causal  # [B, T, T]
        o = F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask[:, None], scale=scale, enable_gqa=gqa)
    return o.transpose(1, 2)


@functools.cache
def _varlen_kwargs() -> dict | None:
    """How this torch's varlen_attn asks for causality (its signature changed across 2.9-2.12); None = absent."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "is_causal" in params:
        return {"is_causal": True}
    if "window_size" in params:
        return {"window_size": (-1, 0)}
    return None


def _varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, scale: float) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    H = q.shape[2]
    if k.shape[2] != H:
        k, v = (x.repeat_interleave(H // k.shape[2], dim=2) for x in (k, v))
    q, k, v = (x.reshape(-1, *x.shape[2:]) for x in (q, k, v))  # [B * T, H, D]
    cu = packing.cu_seqlens.to(torch.int32)
    kwargs = dict(_varlen_kwargs())
    if "scale" in inspect.signature(varlen_attn).parameters:
        kwargs["scale"] = scale
    elif abs(scale - q.shape[-1] ** -0.5) > 1e-12:
        q = q * (scale * q.shape[-1] ** 0.5)
    return varlen_attn(q, k, v, cu, cu, packing.max_len, packing.max_len, **kwargs)
