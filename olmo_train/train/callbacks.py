"""The trainer's callbacks, named in `trainer.callbacks`: metrics, wandb, goodput, preemption, watchdog, checkpoint.

Each owns one concern and talks to the trainer only through the hooks and the trainer's public helpers.
Order matters where one reads what another decided: preemption (asks to stop) runs before checkpoint (saves on
a stop), and watchdog (extends its deadline when a save is due) before checkpoint.
"""

import logging
from pathlib import Path
from typing import Any

from olmo_train.logging.jsonl import MetricsFile
from olmo_train.train.trainer import EXIT_CODES, Callback, Trainer

log = logging.getLogger(__name__)


class MetricsCallback(Callback):
    """RUN/metrics.jsonl (rank 0) and a one-line console summary per reduced step."""

    def __init__(self, path: Path, *, rank: int):
        self.file = MetricsFile(path) if rank == 0 else None

    def on_start(self, trainer: Trainer) -> None:
        if self.file is not None:
            self.file.start(resume_step=trainer.step + 1)

    def post_step(self, trainer: Trainer, step: int, metrics: list[dict]) -> None:
        if self.file is None:
            return
        for record in metrics:
            self.file.write(record)
        if metrics:
            r = metrics[-1]
            log.info("step %d/%d loss %.4f lr %.2e grad %.3f tok/s/dev %.0f mfu %.2f%% data %.1f%%", r["step"],
                     trainer.cfg.trainer.max_steps, r["loss"], r["lr"], r["grad_norm"],
                     r["tokens_per_s_per_device"], 100 * r["mfu"], 100 * r["data_wait_frac"])

    def close(self, trainer: Trainer, reason: str) -> None:
        if self.file is not None:
            self.file.close()


class WandbCallback(Callback):
    """Logs every reduced record to the run's one W&B run (rank 0). Steps an earlier attempt already logged are
    skipped: W&B keeps the first value of a step, and a bit-exact resume recomputes the same one."""

    def __init__(self, make_run: Any, *, rank: int, mode: str):
        self.make_run, self.rank, self.mode, self.run = make_run, rank, mode, None

    def on_start(self, trainer: Trainer) -> None:
        if self.rank != 0 or self.mode == "disabled":
            return
        try:
            self.run = self.make_run(self.mode)
        except Exception as exc:  # noqa: BLE001 - W&B down or unreachable must not stop training
            if self.mode == "offline":
                raise
            log.error("W&B %s init failed (%s); logging offline instead (`wandb sync` uploads it later)",
                      self.mode, exc)
            self.run = self.make_run("offline")

    def post_step(self, trainer: Trainer, step: int, metrics: list[dict]) -> None:
        if self.run is not None:
            for record in metrics:
                self.run.log(record["step"], record)

    def close(self, trainer: Trainer, reason: str) -> None:
        if self.run is not None:
            self.run.finish(EXIT_CODES.get(reason, 1))
            self.run = None


class GoodputCallback(Callback):
    """Step, checkpoint and end events in RUN/goodput/events.jsonl (the ledger writes on rank 0 only)."""

    def __init__(self, ledger: Any):
        self.ledger = ledger

    def post_step(self, trainer: Trainer, step: int, metrics: list[dict]) -> None:
        self.ledger.step_done(step, trainer.step_start, trainer.step_end)

    def on_checkpoint(self, trainer: Trainer, step: int, path: str) -> None:
        self.ledger.event("checkpoint_saved", step=step, path=path,
                          blocking_s=trainer.manager.last_timings.get("blocking_s"))

    def close(self, trainer: Trainer, reason: str) -> None:
        self.ledger.event("attempt_end", step=trainer.step, reason=reason)


class PreemptionCallback(Callback):
    """USR1/TERM: the handler records; ranks agree every `resilience.signal_check_interval` steps; the trainer
    then finishes the step, the checkpoint callback saves and the app exits with code 3."""

    def __init__(self, handler: Any):
        self.handler = handler

    def on_start(self, trainer: Trainer) -> None:
        self.handler.install()

    def pre_step(self, trainer: Trainer, step: int) -> None:
        if self.handler.should_stop(step):
            trainer.request_stop("preempted")

    def close(self, trainer: Trainer, reason: str) -> None:
        self.handler.uninstall()


class WatchdogCallback(Callback):
    """Heartbeat after every step; a longer deadline while a checkpoint is written."""

    def __init__(self, watchdog: Any):
        self.watchdog = watchdog

    def post_step(self, trainer: Trainer, step: int, metrics: list[dict]) -> None:
        self.watchdog.heartbeat(step)
        if trainer.checkpoint_due(step) is not None:
            self.watchdog.extend()

    def close(self, trainer: Trainer, reason: str) -> None:
        self.watchdog.extend()  # the final save and W&B's upload get the start-up grace; the app stops it


class CheckpointCallback(Callback):
    """Saves on the cadence of `checkpoint.interval` / `ephemeral_interval`, when a stop was agreed, and at the
    last step; waits for the pending async save on close."""

    def post_step(self, trainer: Trainer, step: int, metrics: list[dict]) -> None:
        kind = trainer.checkpoint_due(step)
        if kind is not None:
            trainer.save_checkpoint(step, ephemeral=kind == "ephemeral")

    def close(self, trainer: Trainer, reason: str) -> None:
        if reason == "failed":
            return  # a failed step's state is not worth keeping; the manager's pending save still commits
        trainer.manager.wait()


class FaultInjectionCallback(Callback):
    """Test hook: fires the fault OLMO_TRAIN_FAULT plans for this step and rank (olmo_train.resilience.faults)
    at the start of the step. Added by the app only when that variable is set."""

    def __init__(self, run_dir: Path, *, rank: int):
        self.run_dir, self.rank = run_dir, rank

    def pre_step(self, trainer: Trainer, step: int) -> None:
        from olmo_train.resilience.faults import maybe_inject_fault

        maybe_inject_fault(step, rank=self.rank, run_dir=self.run_dir)
