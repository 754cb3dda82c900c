"""The data-parallel backends behind one small interface: `single`, `fsdp2` (here) and `deepspeed`.

Every backend builds the model on the meta device, materialises it and calls `init_weights(seed)` (weights
depend on the seed and parameter names only), builds torch AdamW from `train.optim.param_groups`, clips the
global gradient norm at `grad_clip` and steps. The loop calls, per optimizer step:
`set_lr(lr)`, then `backward(loss)` once per micro-batch, then `finish_step() -> grad norm (before clipping)`.
Loss scaling: the loop divides by the global token count and multiplies by the data-parallel size, because
every backend averages gradients over ranks.
"""

from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from olmo_train.distributed.config import DistributedConfig, FSDP2Config
from olmo_train.errors import ConfigError
from olmo_train.train.optim import OptimizerConfig, build_adamw, param_groups, set_lr

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(kw_only=True, slots=True)
class BuildSpec:
    """What a backend needs beyond its own config."""

    model_config: Any  # olmo_train.model.OlmoHybridConfig
    optimizer: OptimizerConfig
    grad_clip: float
    seed: int
    device: torch.device
    world_size: int
    micro_batch_size: int
    accum_steps: int
    seq_len: int
    saved_world_size: int | None = None  # world size of the checkpoint to resume, if any


class Backend(ABC):
    model: nn.Module
    """Called by the loop: model(input_ids [B, T], doc_lens=...) -> logits [B, T, V]."""
    num_params: int
    """Parameters of the full model (counted before any sharding)."""
    flops_per_token: float
    """Training FLOPs per token at the run's sequence length (the MFU numerator)."""

    @property
    @abstractmethod
    def module(self) -> nn.Module:
        """The bare OlmoHybrid (for FLOP counts and names)."""

    def autocast(self):
        return nullcontext()

    @abstractmethod
    def set_lr(self, lr: float) -> None: ...

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None: ...

    @abstractmethod
    def finish_step(self) -> torch.Tensor:
        """Clip, step, zero the gradients; returns the global gradient norm before clipping."""

    @abstractmethod
    def save(self, manager: Any, step: int, train: dict, *, ephemeral: bool) -> None: ...

    @abstractmethod
    def load(self, manager: Any, path: Path) -> dict:
        """Loads a checkpoint of this backend's format in place; returns its train state."""

    @abstractmethod
    def load_full_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Loads a full (unsharded) model state dict, e.g. from an HF checkpoint; the optimizer starts fresh."""


def build_meta_model(model_config: Any) -> nn.Module:
    from olmo_train.model import OlmoHybrid

    with torch.device("meta"):
        return OlmoHybrid(model_config)


def count(backend: Backend, model: nn.Module, seq_len: int) -> None:
    """Sets the backend's parameter and FLOP counts from the unsharded (possibly meta) model."""
    backend.num_params = model.num_params()
    backend.flops_per_token = float(model.flops_per_token(seq_len))


def materialise(model: nn.Module, device: torch.device, seed: int) -> None:
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(seed)


class TorchBackend(Backend):
    """`single` (one process, plain module, autocast for bf16) and `fsdp2` (fully_shard per block)."""

    def __init__(self, cfg: DistributedConfig, spec: BuildSpec):
        from olmo_train.model.olmo_hybrid.parallelize import (apply_activation_checkpointing, apply_compile,
                                                              apply_fsdp)

        self.cfg, self.spec = cfg, spec
        model = build_meta_model(spec.model_config)
        count(self, model, spec.seq_len)
        apply_activation_checkpointing(model, cfg.activation_checkpointing)
        if isinstance(cfg, FSDP2Config):
            if cfg.compile or (cfg.compile is None and spec.device.type == "cuda"):
                apply_compile(model)
            apply_fsdp(model, _mesh(cfg, spec), param_dtype=DTYPES[cfg.param_dtype],
                       reduce_dtype=DTYPES[cfg.reduce_dtype], reshard_after_forward=cfg.reshard_after_forward)
        elif spec.world_size > 1:
            raise ConfigError(f"distributed=single runs one process, but the world size is {spec.world_size}; "
                              "use distributed=fsdp2 or distributed=deepspeed, or launch one process")
        materialise(model, spec.device, spec.seed)
        self.model = model
        self.optimizer = build_adamw(param_groups(model, spec.optimizer), spec.optimizer)
        self._params = [p for p in model.parameters() if p.requires_grad]

    @property
    def module(self) -> nn.Module:
        return self.model

    def autocast(self):
        if self.cfg.backend == "single" and self.cfg.param_dtype == "bfloat16":
            return torch.autocast(self.spec.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def set_lr(self, lr: float) -> None:
        set_lr(self.optimizer, lr)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def finish_step(self) -> torch.Tensor:
        clip = self.spec.grad_clip if self.spec.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self._params, clip, foreach=True)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    def _state(self, train: dict | None = None) -> dict:
        from olmo_train.checkpoint.state import training_state

        return training_state(self.model, self.optimizer, train)

    def save(self, manager: Any, step: int, train: dict, *, ephemeral: bool) -> None:
        manager.save(step, self._state(train), ephemeral=ephemeral)

    def load(self, manager: Any, path: Path) -> dict:
        return manager.load(path, self._state())

    def load_full_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(self.model, state_dict, options=StateDictOptions(full_state_dict=True, strict=True))


def _mesh(cfg: FSDP2Config, spec: BuildSpec):
    from torch.distributed.device_mesh import init_device_mesh

    world, shard = spec.world_size, cfg.hsdp_shard_size
    if shard in (-1, world):
        return init_device_mesh(spec.device.type, (world,), mesh_dim_names=("shard",))
    if world % shard:
        raise ConfigError(f"distributed.hsdp_shard_size={shard} does not divide the world size {world}; "
                          f"use a divisor of {world} or -1 (shard over all ranks)")
    return init_device_mesh(spec.device.type, (world // shard, shard), mesh_dim_names=("replicate", "shard"))


def build_backend(cfg: DistributedConfig, spec: BuildSpec) -> Backend:
    if cfg.backend == "deepspeed":
        from olmo_train.distributed.deepspeed_backend import DeepSpeedBackend

        return DeepSpeedBackend(cfg, spec)
    return TorchBackend(cfg, spec)


def dp_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1
