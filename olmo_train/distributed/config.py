"""Config of the data-parallel backend, one dataclass per choice of `distributed=single|fsdp2|deepspeed`."""

from dataclasses import dataclass

from olmo_train.errors import ConfigError

DTYPES = ("float32", "bfloat16")
AC_MODES = ("none", "full", "selective")


@dataclass(kw_only=True, slots=True)
class DistributedConfig:
    """Settings every backend shares. `distributed=single`: one process, no sharding. The process group's
    collective timeout is `resilience.collective_timeout_s`."""

    backend: str = "single"
    """Which backend builds the model and optimizer: single | fsdp2 | deepspeed (set by the group option)."""
    param_dtype: str = "float32"
    """Dtype of parameters in forward/backward: float32 | bfloat16. The optimizer keeps float32 master weights."""
    reduce_dtype: str = "float32"
    """Dtype of gradient reduction across ranks: float32 | bfloat16. Does nothing with one process."""
    activation_checkpointing: str = "none"
    """none | full (recompute each block) | selective (keep matmul and attention outputs, recompute the rest)."""

    def __post_init__(self) -> None:
        for name in ("param_dtype", "reduce_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"distributed.{name}={getattr(self, name)!r}; valid: {', '.join(DTYPES)}")
        if self.activation_checkpointing not in AC_MODES:
            raise ConfigError(f"distributed.activation_checkpointing={self.activation_checkpointing!r}; "
                              f"valid: {', '.join(AC_MODES)}")
        if self.backend not in ("single", "fsdp2", "deepspeed"):
            raise ConfigError(f"distributed.backend={self.backend!r}; valid: single, fsdp2, deepspeed")


@dataclass(kw_only=True, slots=True)
class FSDP2Config(DistributedConfig):
    """`distributed=fsdp2`: torch's fully_shard on every block and on the root."""

    backend: str = "fsdp2"
    hsdp_shard_size: int = -1
    """Ranks per shard group for HSDP (shard within, replicate across). -1 = shard over all ranks (plain FSDP)."""
    reshard_after_forward: bool = True
    """Free gathered block parameters after forward (ZeRO-3 like); False keeps them until backward (ZeRO-2 like)."""
    compile: bool | None = None
    """torch.compile each block. None = on CUDA only (CPU compile is slow to start and gains nothing here)."""

    def __post_init__(self) -> None:
        DistributedConfig.__post_init__(self)
        if self.hsdp_shard_size == 0 or self.hsdp_shard_size < -1:
            raise ConfigError(f"distributed.hsdp_shard_size={self.hsdp_shard_size}; use -1 (no HSDP) or >= 1")


@dataclass(kw_only=True, slots=True)
class DeepSpeedConfig(DistributedConfig):
    """`distributed=deepspeed`: a DeepSpeed engine with ZeRO stage 1, 2 or 3, built from this same config."""

    backend: str = "deepspeed"
    zero_stage: int = 3
    """ZeRO stage: 1 (optimizer state sharded), 2 (+ gradients), 3 (+ parameters)."""
    reduce_bucket_size: int = 50_000_000
    """Elements per gradient-reduction bucket (DeepSpeed's reduce_bucket_size)."""
    overlap_comm: bool = False
    """Overlap gradient reduction with backward (DeepSpeed's overlap_comm); off on CPU where it only costs memory."""

    def __post_init__(self) -> None:
        DistributedConfig.__post_init__(self)
        if self.zero_stage not in (1, 2, 3):
            raise ConfigError(f"distributed.zero_stage={self.zero_stage}; valid: 1, 2, 3")
