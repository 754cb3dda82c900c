"""RMSNorm and the gated RMSNorm of the Gated DeltaNet output; both normalise in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from olmo_train.model.common.init import InitSpec


class RMSNorm(nn.Module):
    """y = weight * x / rms(x), computed in float32, returned in x's dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def init_spec(self, name: str) -> InitSpec:
        return InitSpec(kind="ones")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., dim]
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x32).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GatedRMSNorm(RMSNorm):
    """y = weight * rmsnorm(x) * silu(gate): normalise first, then gate (as fla's FusedRMSNormGated)."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # [..., dim] twice
        x32 = x.float()
        normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return ((self.weight * normed) * F.silu(gate.float())).to(x.dtype)
