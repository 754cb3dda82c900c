"""AdamW with OLMo's weight-decay groups, and the cosine-with-warmup learning-rate schedule.

Weight decay, as OLMo 2 / OLMo-core train: every parameter decays except the input embedding (`embed.weight`).
Norm weights (and biases, which this model has none of) decay too, as in OLMo-core's OLMo 2 recipes; the
original OLMo 1 codebase excluded them: `optimizer.decay_norms_and_biases=false` reproduces that choice.
Every backend builds its optimizer from `param_groups` + `OptimizerConfig`, so the semantics are identical.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from olmo_train.errors import ConfigError

ADAMW_IMPLS = ("auto", "fused", "foreach")


@dataclass(kw_only=True, slots=True)
class OptimizerConfig:
    """AdamW hyper-parameters (torch.optim.AdamW semantics: decoupled weight decay, scaled by lr)."""

    lr: float = 3e-4
    """Peak learning rate, reached at the end of warmup."""
    beta1: float = 0.9
    """Decay rate of Adam's first moment."""
    beta2: float = 0.95
    """Decay rate of Adam's second moment."""
    eps: float = 1e-8
    """Added to the square root of the second moment (units of the gradient)."""
    weight_decay: float = 0.1
    """Decoupled weight decay of the decaying group; 0 disables decay everywhere."""
    decay_embeddings: bool = False
    """Decay the input embedding too. OLMo: no."""
    decay_norms_and_biases: bool = True
    """Decay norm weights and biases. OLMo 2 / OLMo-core: yes (only the embedding is excluded); OLMo 1: no."""
    impl: str = "auto"
    """torch AdamW kernel: "fused" (one kernel per step on CUDA), "foreach" (several multi-tensor kernels) or
    "auto" = fused when the parameters are on CUDA, else foreach. The two differ in the last bit of an update, so
    a bit-exact comparison keeps one of them on both sides. On an H100 fused took 21.7 ms off a 216 ms step of the
    7B-width slice (RESULTS.md, Speed)."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"trainer.optimizer.lr={self.lr} must be > 0")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"trainer.optimizer.{name}={getattr(self, name)} must be in [0, 1)")
        if self.eps <= 0 or self.weight_decay < 0:
            raise ConfigError(f"trainer.optimizer: eps={self.eps} must be > 0 and weight_decay="
                              f"{self.weight_decay} >= 0")
        if self.impl not in ADAMW_IMPLS:
            raise ConfigError(f"trainer.optimizer.impl={self.impl!r}; valid: {', '.join(ADAMW_IMPLS)}")


@dataclass(kw_only=True, slots=True)
class SchedulerConfig:
    """Linear warmup from 0 to the peak lr, then cosine decay to `final_lr_ratio` x peak."""

    warmup_steps: int = 2000
    """Optimizer steps of linear warmup (lr = peak * (step + 1) / warmup_steps)."""
    final_lr_ratio: float = 0.1
    """lr at the end of the decay, as a fraction of the peak (0.1 = decay to 0.1x)."""
    decay_steps: int = -1
    """Step at which the cosine reaches its floor. -1 = trainer.max_steps (the schedule spans the run)."""

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or not 0.0 <= self.final_lr_ratio <= 1.0:
            raise ConfigError(f"trainer.scheduler: warmup_steps={self.warmup_steps} must be >= 0 and "
                              f"final_lr_ratio={self.final_lr_ratio} in [0, 1]")


def cosine_lr(step: int, *, peak: float, warmup: int, total: int, final_ratio: float) -> float:
    """Learning rate of optimizer step `step` (0-based); constant at the floor after `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if total <= warmup:
        return peak
    progress = min(1.0, (step - warmup) / (total - warmup))
    floor = peak * final_ratio
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def is_no_decay(name: str, param: nn.Parameter, cfg: OptimizerConfig) -> bool:
    """Whether parameter `name` (a model FQN) goes in the no-decay group."""
    if name.startswith("embed.") and not cfg.decay_embeddings:
        return True
    is_norm_or_bias = param.ndim < 2 or name.endswith(".bias") or ".norm" in name or "norm." in name
    return is_norm_or_bias and not cfg.decay_norms_and_biases


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """Two groups in a fixed order ([decay, no_decay]), parameters in `named_parameters` order."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if is_no_decay(name, param, cfg) else decay).append(param)
    return [{"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.AdamW:
    """torch AdamW with the kernel `cfg.impl` names (auto: fused for CUDA parameters, else foreach)."""
    fused = cfg.impl == "fused" or (cfg.impl == "auto" and all(p.is_cuda for g in groups for p in g["params"]))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, foreach=None if fused else True, fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
