"""The one place that touches flash-linear-attention (fla 0.6.0). Imported lazily: fla is a GPU-only extra.

fla's Triton kernels need CUDA (they cannot run on CPU), so CPU machines never import it and must not have
triton installed. On Hopper with Triton < 3.7.1 fla refuses its Triton backward of the gated delta rule and
uses its tilelang backend instead (install tilelang next to fla).
"""

from __future__ import annotations

import functools
import importlib.util
from types import ModuleType

import torch

from olmo_train.errors import EnvironmentSetupError

FLA_VERSION = "0.6.0"
_INSTALL_HINT = (f"install the GPU extra (pip install 'olmo-train[gpu]', i.e. flash-linear-attention=={FLA_VERSION}, "
                 "plus tilelang on Hopper with triton < 3.7.1), or run the slow PyTorch kernels with "
                 "OLMO_TRAIN_KERNELS=torch")


def fla_installed() -> bool:
    """True when the `fla` package can be imported (does not import it)."""
    return importlib.util.find_spec("fla") is not None


def hopper_backward_problem(capability: tuple[int, int], triton_version: str, has_tilelang: bool) -> str | None:
    """Why fla 0.6.0 cannot train the gated delta rule on this GPU, or None when it can.

    On Hopper (sm_90) fla refuses its Triton backward with Triton < 3.7.1 (fla issue #640: wrong gradients)
    unless tilelang is installed, which fla then uses instead.
    """
    major_minor = tuple(int(p) for p in triton_version.split("+")[0].split(".")[:3] if p.isdigit())
    if capability[0] == 9 and major_minor < (3, 7, 1) and not has_tilelang:
        return (f"fla {FLA_VERSION} has no correct gated-delta-rule backward on Hopper with triton {triton_version} "
                "(fla #640); install tilelang (fla then uses its tilelang backend) or triton >= 3.7.1")
    return None


@functools.cache
def _modules() -> tuple[ModuleType, ModuleType]:
    if not torch.cuda.is_available():
        raise EnvironmentSetupError("fla kernels were requested but CUDA is not available; fla cannot run on CPU. "
                                    "Use OLMO_TRAIN_KERNELS=torch (the default on CPU)")
    try:
        gdn = importlib.import_module("fla.ops.gated_delta_rule")
        conv = importlib.import_module("fla.modules.convolution")
        import triton
    except ImportError as exc:
        raise EnvironmentSetupError(f"the Gated DeltaNet CUDA kernels are missing ({exc}); {_INSTALL_HINT}") from exc
    problem = hopper_backward_problem(torch.cuda.get_device_capability(), triton.__version__,
                                      importlib.util.find_spec("tilelang") is not None)
    if problem:
        raise EnvironmentSetupError(problem)
    return gdn, conv


def chunk_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                           beta: torch.Tensor, *, cu_seqlens: torch.Tensor | None,
                           cu_seqlens_cpu: torch.Tensor | None) -> torch.Tensor:
    """fla's chunked gated delta rule; q, k L2-normalised in the kernel, scale K^-0.5. -> [B, T, HV, V]."""
    gdn, _ = _modules()
    o, _ = gdn.chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True, cu_seqlens=cu_seqlens,
                                      cu_seqlens_cpu=cu_seqlens_cpu)
    return o


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, *, cu_seqlens: torch.Tensor | None,
                       cu_seqlens_cpu: torch.Tensor | None) -> torch.Tensor:
    """fla's depthwise causal conv + SiLU over x [B, T, C] with weight [C, W] -> [B, T, C]."""
    _, conv = _modules()
    y, _ = conv.causal_conv1d(x, weight=weight, activation="silu", cu_seqlens=cu_seqlens,
                              cu_seqlens_cpu=cu_seqlens_cpu)
    return y
