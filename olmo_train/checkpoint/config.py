"""Checkpoint settings (Hydra group `checkpoint`)."""

from dataclasses import dataclass
from typing import Literal

from olmo_train.errors import ConfigError

SaveKind = Literal["permanent", "ephemeral"]


@dataclass(kw_only=True, slots=True)
class CheckpointConfig:
    """When checkpoints are written, how many are kept, and where a fresh run starts from."""

    interval: int = 1000
    """Steps between regular checkpoints (saved when step % interval == 0). 0 = none (the trainer may still save
    on preemption or at the end). Regular checkpoints are subject to `keep` / `keep_every`."""

    ephemeral_interval: int = 0
    """Steps between ephemeral checkpoints (0 = off). An ephemeral checkpoint is deleted as soon as a newer
    checkpoint commits; it only shortens the work lost to a failure. Must be smaller than `interval`."""

    keep: int = 3
    """How many of the newest committed regular checkpoints to keep (>= 1). The newest good checkpoint is never
    deleted, whatever this says."""

    keep_every: int = 0
    """Steps: a checkpoint whose step is a multiple of this is kept forever (0 = none). Must be a multiple of
    `interval`, else no checkpoint would ever match."""

    async_save: bool = True
    """Write in a background thread: `save` returns once the state is copied to CPU memory (pinned on GPU);
    `wait()` (called by the next save and on exit) blocks until it is committed. False = `save` blocks."""

    write_threads: int = 1
    """Threads (and files) per rank that write tensor data; more can help on parallel file systems."""

    collective_timeout_s: int = 900
    """Seconds a rank waits for the others inside a checkpoint operation (their writes included) before the save
    or load fails. Bounds the hang when another rank died mid-save (the default process-group timeout is 30 min)."""

    load_path: str | None = None
    """Where a run without committed checkpoints of its own starts from: a checkpoint directory (`.../step<N>`),
    another run's `checkpoints/` or run directory (its newest good checkpoint), or a transformers `olmo_hybrid`
    directory (weights only). None = start from scratch. Ignored once this run has committed a checkpoint."""

    def __post_init__(self) -> None:
        for name in ("interval", "ephemeral_interval", "keep_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"checkpoint.{name}={getattr(self, name)} is negative; use 0 to turn it off")
        if self.keep < 1:
            raise ConfigError(f"checkpoint.keep={self.keep}: keep at least 1 checkpoint")
        if self.collective_timeout_s < 1:
            raise ConfigError(f"checkpoint.collective_timeout_s={self.collective_timeout_s}: use a positive number "
                              "of seconds, larger than the time one rank needs to write its shard")
        if self.write_threads < 1:
            raise ConfigError(f"checkpoint.write_threads={self.write_threads}: use 1 or more")
        if self.ephemeral_interval and self.interval and self.ephemeral_interval >= self.interval:
            raise ConfigError(f"checkpoint.ephemeral_interval={self.ephemeral_interval} is not smaller than "
                              f"checkpoint.interval={self.interval}; make it smaller or 0 (off)")
        if self.keep_every and self.interval and self.keep_every % self.interval:
            raise ConfigError(f"checkpoint.keep_every={self.keep_every} is not a multiple of "
                              f"checkpoint.interval={self.interval}, so no checkpoint would be kept forever; "
                              f"use a multiple such as {self.interval * max(1, self.keep_every // self.interval)}")
        if self.load_path == "":
            raise ConfigError("checkpoint.load_path is an empty string; use null for none or a directory")

    def save_kind(self, step: int) -> SaveKind | None:
        """Whether step `step` (after it ran) is due for a regular or an ephemeral checkpoint, or neither."""
        if step <= 0:
            return None
        if self.interval and step % self.interval == 0:
            return "permanent"
        if self.ephemeral_interval and step % self.ephemeral_interval == 0:
            return "ephemeral"
        return None
