"""The training loop. Everything optional (metrics files, W&B, goodput, preemption, watchdog, checkpoint cadence)
is a callback with the hooks of docs/interfaces.md; `fit()` only trains.

Step numbers: `step` counts completed optimizer steps, so step N trains the loader's global batch N - 1, is
logged as `step: N` and is checkpointed as `step<N>/`.
"""

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from olmo_train.distributed.backend import Backend
from olmo_train.train.config import Config
from olmo_train.train.losses import chunked_lm_loss_sums, count_tokens, fused_lm_loss, lm_loss_sums
from olmo_train.train.metrics import MetricsTracker
from olmo_train.train.optim import cosine_lr

log = logging.getLogger(__name__)

EXIT_CODES = {"finished": 0, "failed": 1, "preempted": 3, "hang": 4}


class Callback:
    """Hooks called in the order of `trainer.callbacks`; override what you need."""

    def on_start(self, trainer: "Trainer") -> None: ...
    def pre_step(self, trainer: "Trainer", step: int) -> None: ...
    def post_step(self, trainer: "Trainer", step: int, metrics: list[dict]) -> None:
        """`metrics`: the records reduced at this step, one per step since the last reduction (often empty)."""
    def on_checkpoint(self, trainer: "Trainer", step: int, path: str) -> None: ...
    def on_error(self, trainer: "Trainer", exc: BaseException) -> None: ...
    def close(self, trainer: "Trainer", reason: str) -> None: ...


@dataclass(kw_only=True)
class Trainer:
    cfg: Config
    backend: Backend
    loader: Any  # olmo_train.data TrainLoader
    manager: Any  # olmo_train.checkpoint.CheckpointManager
    tracker: MetricsTracker
    device: torch.device
    world_size: int
    rank: int
    step: int = 0
    tokens: int = 0
    wandb_run_id: str = ""
    callbacks: list[Callback] = field(default_factory=list)
    stop_reason: str | None = None
    last_saved_step: int = -1
    step_start: float = 0.0
    step_end: float = 0.0

    def fit(self) -> str:
        """Trains to `trainer.max_steps` or until a callback asks to stop; returns the end reason."""
        batches = None
        try:
            self._call("on_start")
            batches = self.loader.iter_from(self.step)
            while self.step < self.cfg.trainer.max_steps and self.stop_reason is None:
                step = self.step + 1
                self._call("pre_step", step)
                self.step_start = time.time()
                t0 = time.perf_counter()
                index, micro_batches = next(batches)
                data_wait = time.perf_counter() - t0
                assert index == step - 1, f"loader gave batch {index} for step {step}"
                lr = self.lr(step)
                sums = self.train_step(micro_batches, lr)
                self.step, self.tokens = step, self.tokens + self.batch_tokens
                self.step_end = time.time()
                self.tracker.record(step, **sums, lr=lr, step_time_s=time.perf_counter() - t0,
                                    data_wait_s=data_wait, batch_tokens=self.batch_tokens, tokens=self.tokens)
                records = self.tracker.flush() if self._flush_due(step) else []
                self._call("post_step", step, records)
        except BaseException as exc:
            self.stop_reason = "failed"
            self._call("on_error", exc)
            self._close_all("failed")
            raise
        finally:
            if batches is not None:
                batches.close()  # stops the prefetch thread
        reason = self.stop_reason or "finished"
        self._close_all(reason)
        return reason

    def train_step(self, micro_batches: list, lr: float) -> dict[str, torch.Tensor]:
        """Forward/backward over this rank's micro-batches, then one optimizer step. Loss sums are divided by
        the counted tokens of the global batch, so the update is independent of how the batch is split."""
        batches = [b.to(self.device) for b in micro_batches]
        n_tokens = torch.stack([count_tokens(b.labels) for b in batches]).sum()
        if dist.is_initialized() and self.world_size > 1:
            dist.all_reduce(n_tokens)
        scale = self.world_size / n_tokens.clamp(min=1).float()
        ce_total = torch.zeros((), device=self.device)
        z_total = torch.zeros((), device=self.device)
        self.backend.set_lr(lr)
        for batch in batches:
            objective, ce_sum, z_sum = self.micro_batch_loss(batch, scale)
            self.backend.backward(objective)
            ce_total += ce_sum.detach()
            z_total += z_sum.detach()
        grad_norm = self.backend.finish_step()
        return {"ce_sum": ce_total, "z_sum": z_total, "n_tokens": n_tokens, "grad_norm": grad_norm}

    def micro_batch_loss(self, batch: Any, scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(objective = (ce_sum + z_loss * z_sum) * scale, ce_sum, z_sum) of one micro-batch by
        `trainer.loss_impl`. The fused and chunked losses run inside the model's call (its head), where FSDP2
        and ZeRO-3 have gathered the head weight."""
        model, z_loss, labels = self.backend.model, self.cfg.trainer.z_loss, batch.labels
        impl = self.cfg.trainer.loss_impl
        with self.backend.autocast():
            if impl == "fused":
                return model(batch.input_ids, doc_lens=batch.doc_lens, head_loss=partial(
                    fused_lm_loss, labels=labels, ce_weight=scale, z_weight=z_loss * scale))
            if impl == "chunked":
                ce_sum, z_sum = model(batch.input_ids, doc_lens=batch.doc_lens,
                                      head_loss=partial(chunked_lm_loss_sums, labels=labels))
            else:
                logits = model(batch.input_ids, doc_lens=batch.doc_lens)  # [mb, T, V]
        if impl == "full":
            ce_sum, z_sum = lm_loss_sums(logits, labels)
        return (ce_sum + z_loss * z_sum) * scale, ce_sum, z_sum

    # ---- helpers used by callbacks -------------------------------------------------------------------------

    @property
    def batch_tokens(self) -> int:
        return self.cfg.trainer.global_batch_tokens

    def lr(self, step: int) -> float:
        sched, opt = self.cfg.trainer.scheduler, self.cfg.trainer.optimizer
        total = sched.decay_steps if sched.decay_steps > 0 else self.cfg.trainer.max_steps
        return cosine_lr(step - 1, peak=opt.lr, warmup=sched.warmup_steps, total=total,
                         final_ratio=sched.final_lr_ratio)

    def checkpoint_due(self, step: int) -> str | None:
        """"permanent" / "ephemeral" when step `step` must be checkpointed (cadence, stop, end), else None."""
        if "checkpoint" not in self.cfg.trainer.callbacks:
            return None
        if self.stop_reason is not None or step == self.cfg.trainer.max_steps:
            return "permanent"
        return self.cfg.checkpoint.save_kind(step)

    def save_checkpoint(self, step: int, *, ephemeral: bool = False) -> None:
        if step == self.last_saved_step:
            return
        self.backend.save(self.manager, step, self.train_state(), ephemeral=ephemeral)
        self.last_saved_step = step
        self._call("on_checkpoint", step, str(self.manager.dir / f"step{step}"))

    def train_state(self) -> dict:
        return {"step": self.step, "tokens": self.tokens, "data": self.loader.state_dict(),
                "wandb_run_id": self.wandb_run_id, "world_size": self.world_size,
                "micro_batch_size": self.cfg.micro_batch_size, "backend": self.cfg.distributed.backend,
                "hardware": self.cfg.cluster.name, "seed": self.cfg.seed}

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason

    def _flush_due(self, step: int) -> bool:
        return (step % self.cfg.logger.interval == 0 or self.stop_reason is not None
                or self.checkpoint_due(step) is not None)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _close_all(self, reason: str) -> None:
        """Every callback's close runs even when one fails; the first failure is raised afterwards."""
        first: BaseException | None = None
        for cb in self.callbacks:
            try:
                cb.close(self, reason)
            except Exception as exc:  # noqa: BLE001 - keep closing the others (files, W&B, checkpoints)
                log.exception("callback %s failed to close", type(cb).__name__)
                first = first or exc
        if first is not None and reason != "failed":
            raise first

