"""Kernel dispatch: fla's Triton kernels on CUDA, our PyTorch implementations elsewhere.

`OLMO_TRAIN_KERNELS` (env) or `use_kernels(...)` picks: "auto" (default: fla on CUDA, torch on CPU),
"fla" (fail loudly without it) or "torch" (our implementations on any device; slow on GPU, for checks).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import torch

from olmo_train.errors import ConfigError
from olmo_train.model.ops import conv_torch, fla_shim, gdn_torch
from olmo_train.model.ops.attention import causal_attention
from olmo_train.model.ops.packing import Packing, make_packing

Kernels = Literal["auto", "fla", "torch"]
_KERNEL_CHOICES = ("auto", "fla", "torch")
_override: list[str] = []

__all__ = ["Packing", "make_packing", "causal_attention", "gated_delta_rule", "short_conv", "kernels_for",
           "use_kernels"]


@contextlib.contextmanager
def use_kernels(kind: Kernels) -> Iterator[None]:
    """Forces a kernel family inside the block (e.g. "torch" to compare against fla on the same GPU)."""
    if kind not in _KERNEL_CHOICES:
        raise ConfigError(f"kernels={kind!r}: valid options are {list(_KERNEL_CHOICES)}")
    _override.append(kind)
    try:
        yield
    finally:
        _override.pop()


def kernels_for(device: torch.device) -> Literal["fla", "torch"]:
    """The kernel family used for tensors on `device`."""
    choice = _override[-1] if _override else os.environ.get("OLMO_TRAIN_KERNELS", "auto")
    if choice not in _KERNEL_CHOICES:
        raise ConfigError(f"OLMO_TRAIN_KERNELS={choice!r}: valid options are {list(_KERNEL_CHOICES)}")
    if choice == "auto":
        return "fla" if device.type == "cuda" else "torch"
    return choice  # type: ignore[return-value]


@torch.compiler.disable  # a kernel boundary: fla's kernels are opaque, ours loops over a data-dependent layout
def gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                     packing: Packing | None) -> torch.Tensor:
    """q, k [B, T, H, K] (raw: L2-normalised here), v [B, T, HV, V], g (log decay, fp32), beta [B, T, HV]
    -> [B, T, HV, V] in v's dtype; documents of `packing` do not share state."""
    B, T = q.shape[:2]
    cu = cu_cpu = None
    if packing is not None:  # both kernels take documents as one flat row
        q, k, v, g, beta = (x.reshape(1, B * T, *x.shape[2:]) for x in (q, k, v, g, beta))
        cu, cu_cpu = packing.cu_seqlens, packing.cu_seqlens_cpu
    if kernels_for(q.device) == "fla":
        o = fla_shim.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu, cu_seqlens_cpu=cu_cpu)
    else:
        o = gdn_torch.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu_cpu)
    return o.reshape(B, T, *o.shape[2:]).to(v.dtype)


_fla_conv = torch.compiler.disable(fla_shim.causal_conv1d_silu)


def short_conv(x: torch.Tensor, weight: torch.Tensor, packing: Packing | None) -> torch.Tensor:
    """Depthwise causal conv + SiLU: x [B, T, C], weight [C, W] -> [B, T, C]; taps stop at document starts."""
    if kernels_for(x.device) == "fla":
        B, T, C = x.shape
        if packing is None:
            return _fla_conv(x, weight, cu_seqlens=None, cu_seqlens_cpu=None)
        y = _fla_conv(x.reshape(1, B * T, C), weight, cu_seqlens=packing.cu_seqlens,
                                        cu_seqlens_cpu=packing.cu_seqlens_cpu)
        return y.reshape(B, T, C)
    return conv_torch.causal_conv1d_silu(x, weight, None if packing is None else packing.positions)
