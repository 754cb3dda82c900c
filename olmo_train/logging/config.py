"""Config of metrics logging: RUN/metrics.jsonl and W&B."""

from dataclasses import dataclass, field

from olmo_train.errors import ConfigError

WANDB_MODES = ("auto", "online", "offline", "disabled")


@dataclass(kw_only=True, slots=True)
class WandbConfig:
    """One W&B run per training run, continued by every attempt (its id is kept in RUN/wandb/run_id)."""

    mode: str = "auto"
    """auto (online when WANDB_API_KEY is set, else offline) | online | offline | disabled."""
    project: str = "olmo-train"
    """W&B project the run is logged to."""
    entity: str | None = None
    """W&B team or user; None = the API key's default entity."""
    group: str | None = None
    """W&B run group (e.g. one per ablation family); None = no group."""
    tags: list[str] = field(default_factory=list)
    """W&B tags of the run."""

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ConfigError(f"logger.wandb.mode={self.mode!r}; valid: {', '.join(WANDB_MODES)}")


@dataclass(kw_only=True, slots=True)
class LoggerConfig:
    interval: int = 1
    """Steps between metric reductions (one all-reduce, one host sync). Every step still gets its own record;
    throughput, MFU and memory are averaged over the interval. Non-finite losses are caught at this cadence."""
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ConfigError(f"logger.interval={self.interval} must be >= 1")
