"""Deterministic initialisation: every parameter from (seed, its name) alone, whatever the sharding.

A parameter's values are drawn in blocks of rows along dim 0, each block from its own CPU generator seeded by
a hash of (seed, canonical parameter name, block index). A rank that holds only some rows (FSDP2 shards dim 0)
draws only the blocks it needs, so every rank ends up with its slice of the same full tensor, on any world size,
on meta-built models after `to_empty()`, and on any device (drawing happens on the CPU).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

_BLOCK_ELEMENTS = 1 << 20  # about this many values per generator block
_WRAPPER_TOKENS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.", "module.")


@dataclass(frozen=True, slots=True)
class InitSpec:
    """How one parameter is drawn."""

    kind: Literal["normal", "ones", "uniform", "a_log", "dt_bias"]
    std: float = 0.0
    """"normal": a normal of this std truncated at +-3 std."""
    low: float = 0.0
    """"uniform" and "a_log" (A ~ U(low, high), value log A) and "dt_bias" (dt log-uniform in [low, high])."""
    high: float = 0.0
    floor: float = 0.0
    """"dt_bias": dt is clamped to at least this before the inverse softplus."""


def canonical_name(name: str) -> str:
    """The parameter name with wrapper prefixes (activation checkpointing, compile, DDP) removed."""
    for token in _WRAPPER_TOKENS:
        name = name.replace(token, "")
    return name


def _block_seed(seed: int, name: str, block: int) -> int:
    digest = hashlib.sha256(f"{seed}/{name}/{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _generator(seed: int, name: str, block: int) -> torch.Generator:
    """A CPU generator (explicitly: a `with torch.device("cuda")` block would otherwise move it)."""
    return torch.Generator(device="cpu").manual_seed(_block_seed(seed, name, block))


def _draw(spec: InitSpec, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A float32 CPU tensor of `shape` drawn per `spec`."""
    out = torch.empty(shape, dtype=torch.float32, device="cpu")
    if spec.kind == "ones":
        return out.fill_(1.0)
    if spec.kind == "normal":
        return nn.init.trunc_normal_(out, std=spec.std, a=-3 * spec.std, b=3 * spec.std, generator=gen)
    if spec.kind == "uniform":
        return out.uniform_(spec.low, spec.high, generator=gen)
    if spec.kind == "a_log":  # A ~ U(low, high), kept off 0 so log A is finite
        return out.uniform_(spec.low, spec.high, generator=gen).clamp_(min=1e-6).log_()
    if spec.kind == "dt_bias":  # dt log-uniform, floored; store softplus^-1(dt) = dt + log(1 - exp(-dt))
        lo, hi = math.log(spec.low), math.log(spec.high)
        dt = out.uniform_(0.0, 1.0, generator=gen).mul_(hi - lo).add_(lo).exp_().clamp_(min=spec.floor)
        return dt + torch.log(-torch.expm1(-dt))
    raise AssertionError(spec.kind)


def full_rows(spec: InitSpec, seed: int, name: str, shape: tuple[int, ...], start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) along dim 0 of the full tensor `shape` that (seed, name) defines, float32 on CPU."""
    if len(shape) == 0:
        return _draw(spec, (1,), _generator(seed, name, 0))[0]
    row_elems = math.prod(shape[1:])
    rows_per_block = max(1, _BLOCK_ELEMENTS // max(row_elems, 1))
    parts = []
    for block in range(start // rows_per_block, (stop - 1) // rows_per_block + 1 if stop > start else 0):
        b0 = block * rows_per_block
        b1 = min(b0 + rows_per_block, shape[0])
        gen = _generator(seed, name, block)
        values = _draw(spec, (b1 - b0, *shape[1:]), gen)
        parts.append(values[max(start, b0) - b0:min(stop, b1) - b0])
    if not parts:
        return torch.empty((0, *shape[1:]), device="cpu")
    return torch.cat(parts)


def init_parameter(param: torch.Tensor, spec: InitSpec, seed: int, name: str) -> None:
    """Fills `param` (a plain tensor or a DTensor shard) in place with its slice of the full tensor."""
    name = canonical_name(name)
    local, offset = _local_view(param)
    shape = tuple(param.shape)
    if local.numel() == 0:
        return
    if len(shape) == 0:
        values = full_rows(spec, seed, name, shape, 0, 1)
    else:
        values = full_rows(spec, seed, name, shape, offset[0], offset[0] + local.shape[0])
        index = tuple(slice(o, o + n) for o, n in zip(offset[1:], local.shape[1:]))
        values = values[(slice(None), *index)]
    with torch.no_grad():
        local.copy_(values.to(local.dtype))


def _local_view(param: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """This rank's part of `param` and its offset in the full tensor (all zeros for a plain tensor)."""
    data = param.data if isinstance(param, nn.Parameter) else param
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        DTensor = None  # noqa: N806
    if DTensor is not None and isinstance(data, DTensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        _, offset = compute_local_shape_and_global_offset(data.shape, data.device_mesh, data.placements)
        return data.to_local(), tuple(offset)
    return data, (0,) * data.dim()


def default_spec(module: nn.Module, local_name: str, std: float) -> InitSpec:
    """Linear and embedding weights: truncated normal; modules with their own rules answer `init_spec`."""
    if hasattr(module, "init_spec"):
        return module.init_spec(local_name)
    if isinstance(module, (nn.Linear, nn.Embedding)) and local_name == "weight":
        return InitSpec(kind="normal", std=std)
    raise TypeError(f"no init rule for parameter {local_name!r} of {type(module).__name__}")


def init_module(model: nn.Module, seed: int, std: float) -> None:
    """Initialises every parameter of `model` from (seed, parameter name)."""
    for module_name, module in model.named_modules():
        for local_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{local_name}" if module_name else local_name
            init_parameter(param, default_spec(module, local_name, std), seed, full)
