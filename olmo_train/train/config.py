"""The root config of `olmo-train` and the trainer's own sections; every group registered in Hydra's ConfigStore.

Every section is a `kw_only, slots` dataclass validated in `__post_init__`: a misspelt or unknown key is an
error, also with `+key=value`. `schema_version` is the contract with saved configs (RUN/config.yaml).
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from olmo_train.checkpoint.config import CheckpointConfig
from olmo_train.train.cluster import ClusterConfig
from olmo_train.data.config import DataConfig
from olmo_train.distributed.config import DeepSpeedConfig, DistributedConfig, FSDP2Config
from olmo_train.errors import ConfigError
from olmo_train.logging.config import LoggerConfig
from olmo_train.model import OlmoHybridConfig, presets
from olmo_train.resilience.config import ResilienceConfig
from olmo_train.train.optim import OptimizerConfig, SchedulerConfig

SCHEMA_VERSION = 1
CALLBACKS = ("metrics", "wandb", "goodput", "preemption", "watchdog", "checkpoint")
LOSS_IMPLS = ("fused", "chunked", "full")


@dataclass(kw_only=True, slots=True)
class RunConfig:
    name: str = "cpu-tiny"
    """The run's name (W&B run name, default directory name)."""
    dir: str = "runs/${run.name}"
    """The run directory shared by every attempt: config, metrics, checkpoints, ledger, W&B files."""


@dataclass(kw_only=True, slots=True)
class TrainerConfig:
    max_steps: int = 40
    """Optimizer steps of the whole run (all attempts together)."""
    global_batch_tokens: int = 4096
    """Tokens per optimizer step over all ranks: global instances = global_batch_tokens / seq_len."""
    seq_len: int = 256
    """Tokens per training sequence."""
    micro_batch_size: int = -1
    """Sequences per rank per forward/backward; -1 = cluster.micro_batch_size."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 = no clipping."""
    z_loss: float = 1e-5
    """Weight of the z-loss (mean of logsumexp(logits)^2 over counted tokens); 0 = none."""
    loss_impl: str = "fused"
    """How the cross-entropy + z-loss is computed (`train/losses.py`); all give the same loss up to rounding.
    "fused": from the final hidden states and the LM head weight, a chunk of tokens at a time, gradients computed
    in forward (no [tokens, vocab] float32 tensor, no recompute). "chunked": the same chunks, logits recomputed in
    backward (one more head matmul). "full": logits of all tokens, then the loss (their float32 copy and its
    gradient cost 2 x tokens x vocab x 4 bytes)."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    callbacks: list[str] = field(default_factory=lambda: list(CALLBACKS))
    """Callbacks by name, run in this order at every hook. Valid: metrics, wandb, goodput, preemption,
    watchdog, checkpoint."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "global_batch_tokens", "seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name}={getattr(self, name)} must be >= 1")
        if self.micro_batch_size < 1 and self.micro_batch_size != -1:
            raise ConfigError(f"trainer.micro_batch_size={self.micro_batch_size}; use >= 1 or -1 (the cluster's)")
        if self.global_batch_tokens % self.seq_len:
            raise ConfigError(f"trainer.global_batch_tokens={self.global_batch_tokens} is not a multiple of "
                              f"trainer.seq_len={self.seq_len}; use e.g. "
                              f"{max(1, self.global_batch_tokens // self.seq_len) * self.seq_len}")
        if self.grad_clip < 0 or self.z_loss < 0:
            raise ConfigError(f"trainer.grad_clip={self.grad_clip} and trainer.z_loss={self.z_loss} must be >= 0")
        if self.loss_impl not in LOSS_IMPLS:
            raise ConfigError(f"trainer.loss_impl={self.loss_impl!r}; valid: {', '.join(LOSS_IMPLS)}")
        unknown = [c for c in self.callbacks if c not in CALLBACKS]
        if unknown:
            raise ConfigError(f"trainer.callbacks has unknown names {unknown}; valid: {', '.join(CALLBACKS)}")


@dataclass(kw_only=True, slots=True)
class Config:
    schema_version: int = SCHEMA_VERSION
    """Version of this schema; a saved config of another version is refused with the difference named."""
    seed: int = 0
    """Seed of the weights (with each parameter's name) and of the data order (with each sample's index)."""
    run: RunConfig = field(default_factory=RunConfig)
    model: OlmoHybridConfig = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    resilience: ResilienceConfig = field(default_factory=ResilienceConfig)

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise ConfigError(f"schema_version={self.schema_version}, but this olmo-train reads version "
                              f"{SCHEMA_VERSION}; compose a fresh config (the defaults) instead of an old dump")

    @property
    def micro_batch_size(self) -> int:
        mb = self.trainer.micro_batch_size
        return self.cluster.micro_batch_size if mb == -1 else mb


def batch_layout(cfg: Config, world_size: int) -> tuple[int, int]:
    """(global instances, accumulation steps) of one optimizer step; ConfigError naming the numbers if the
    world size and micro-batch cannot form the global batch."""
    instances = cfg.trainer.global_batch_tokens // cfg.trainer.seq_len
    per_pass = world_size * cfg.micro_batch_size
    if instances % per_pass:
        raise ConfigError(
            f"trainer.global_batch_tokens={cfg.trainer.global_batch_tokens} / trainer.seq_len={cfg.trainer.seq_len}"
            f" = {instances} sequences per step cannot be split over world size {world_size} x micro-batch "
            f"{cfg.micro_batch_size} = {per_pass} sequences per pass; make global_batch_tokens a multiple of "
            f"{per_pass * cfg.trainer.seq_len} or change trainer.micro_batch_size")
    return instances, instances // per_pass


def register_configs(cs: ConfigStore | None = None) -> None:
    """The root schema and the dataclass-backed group options (yaml options live in configs/)."""
    cs = cs or ConfigStore.instance()
    cs.store(name="olmo_train_schema", node=Config)
    for name in presets.names():
        cs.store(group="model", name=name, node=presets.get(name))
    cs.store(group="distributed", name="single", node=DistributedConfig())
    cs.store(group="distributed", name="fsdp2", node=FSDP2Config())
    cs.store(group="distributed", name="deepspeed", node=DeepSpeedConfig())


def to_container(cfg: Any) -> dict:
    """A plain dict of a Config (for config.yaml, W&B and checkpoints)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
