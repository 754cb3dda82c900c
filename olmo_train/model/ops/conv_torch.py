"""Depthwise causal convolution (+ SiLU) in plain PyTorch, with packed documents kept apart."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """y[t] = silu(sum_j weight[:, W-1-j] * x[t-j]) over x [B, T, C], weight [C, W] -> [B, T, C].

    Taps x[t-j] are left out when token t is fewer than j tokens into its document (`positions` [B, T] is the
    position inside the document; None = each row is one document).
    """
    B, T, C = x.shape
    width = weight.shape[1]
    x = x.to(weight.dtype)
    if positions is None:
        y = F.conv1d(x.transpose(1, 2), weight[:, None, :], padding=width - 1, groups=C)[..., :T].transpose(1, 2)
        return F.silu(y)
    y = x * weight[:, width - 1]
    for j in range(1, width):
        shifted = F.pad(x, (0, 0, j, 0))[:, :T]  # [B, T, C]: x[t - j], zeros before the row start
        keep = (positions >= j)[..., None]
        y = y + torch.where(keep, shifted, 0.0) * weight[:, width - 1 - j]
    return F.silu(y)
