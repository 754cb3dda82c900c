"""How an OlmoHybrid is parallelised: activation checkpointing, per-block compile, FSDP2 sharding.

Applied in that order (checkpointing inside compile inside sharding), each in place and without renaming any
parameter, so checkpoints and optimizer groups see the same names on every backend.
"""

import logging
from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from olmo_train.errors import ConfigError

log = logging.getLogger(__name__)

AC_MODES = ("none", "full", "selective")

# Ops whose outputs selective checkpointing keeps: the matmuls and attention (expensive to recompute, and what
# the FLOP count is made of). Norms, activations, gates and the GDN elementwise math are recomputed.
_SAVE_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def _selective_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _checkpointed(forward: Callable, selective: bool) -> Callable:
    context_fn = partial(create_selective_checkpoint_contexts, _selective_policy) if selective else None

    def run(*args, **kwargs):
        if context_fn is None:
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, context_fn=context_fn, **kwargs)

    return run


def apply_activation_checkpointing(model: nn.Module, mode: str) -> None:
    """Recomputes each block's activations in backward: 'full' all of them, 'selective' all but matmul and
    attention outputs; 'none' does nothing. Replaces `block.forward` only (parameter names are unchanged)."""
    if mode not in AC_MODES:
        raise ConfigError(f"activation checkpointing mode {mode!r}; valid: {', '.join(AC_MODES)}")
    if mode == "none":
        return
    for block in model.blocks:
        block.forward = _checkpointed(block.forward, selective=mode == "selective")


def apply_compile(model: nn.Module) -> None:
    """torch.compile every block on its own (blocks of one kind share a graph; compile time stays per kind)."""
    for block in model.blocks:
        block.compile(fullgraph=False)


def mixed_precision(param_dtype: torch.dtype, reduce_dtype: torch.dtype) -> MixedPrecisionPolicy:
    """bf16 compute with fp32 gradient reduction is the recipe; float32/float32 changes nothing."""
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype, output_dtype=None,
                                cast_forward_inputs=True)


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, *, param_dtype: torch.dtype = torch.float32,
               reduce_dtype: torch.dtype = torch.float32, reshard_after_forward: bool = True) -> nn.Module:
    """fully_shard on every block, then on the root (embedding, final norm, LM head).

    A 1-D mesh shards over all its ranks (FSDP); a 2-D mesh ("replicate", "shard") shards within each row and
    replicates across rows (HSDP). The last block is not resharded after forward: backward needs it at once.
    """
    policy = mixed_precision(param_dtype, reduce_dtype)
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        fully_shard(block, mesh=mesh, mp_policy=policy,
                    reshard_after_forward=reshard_after_forward and i < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return model
