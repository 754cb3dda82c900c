"""Synthetic ledgers with known answers, built event by event the way the trainer and pretrain.sh write them."""

import random
from typing import Any


class LedgerBuilder:
    def __init__(self, hardware: str = "cpu", world_size: int = 2, t0: float = 1000.0):
        self.events: list[dict[str, Any]] = []
        self.t = t0
        self.hardware, self.world_size = hardware, world_size
        self.attempt = ""

    def emit(self, event: str, step: int | None = None, **fields: Any) -> None:
        self.events.append({"time": self.t, "event": event, "attempt": self.attempt, "hardware": self.hardware,
                            "world_size": self.world_size, "step": step, **fields})

    def start(self, attempt: str, *, wait: float = 0.0, startup: float = 2.0, load: float = 0.5,
              loaded_step: int | None = 0, scheduler: bool = True) -> None:
        self.t += wait
        self.attempt = attempt
        if scheduler:
            self.emit("job_start", scheduler_start=self.t, submit_time=self.t - wait)
        self.t += startup
        self.emit("attempt_start")
        self.emit("init_done")
        self.t += load
        if loaded_step is not None:
            self.emit("checkpoint_loaded", step=loaded_step)

    def steps(self, first: int, last: int, step_s: float = 1.0, per_event: int = 1) -> None:
        s = first
        while s <= last:
            n = 1 if s == first else min(per_event, last - s + 1)
            start = self.t
            self.t += n * step_s
            self.emit("step", step=s + n - 1, first_step=s, steps=n, start=start, duration_s=n * step_s)
            s += n

    def checkpoint(self, step: int, blocking: float = 0.25) -> None:
        self.t += blocking
        self.emit("checkpoint_saved", step=step, duration_s=blocking)

    def end(self, reason: str | None, *, detect: float = 0.0, job_outcome: str | None = None) -> None:
        self.t += detect
        if reason is not None:
            self.emit("attempt_end", reason=reason)
        if job_outcome is not None:
            self.t += 0.5
            self.emit("job_end", outcome=job_outcome)


def poisson_run(*, mtbf_s: float, interval_steps: int, step_s: float, ckpt_s: float, recovery_s: float,
                total_steps: int, seed: int = 0) -> list[dict[str, Any]]:
    """A long run whose failures arrive as a Poisson process (also during checkpoints and recoveries): the process
    the planner models. The batch script's job_end marks each failure; a recovery struck by a failure restarts."""
    rng = random.Random(seed)
    b = LedgerBuilder()
    b.start("a0", startup=0.0, load=0.0, loaded_step=0)
    next_failure = b.t + rng.expovariate(1 / mtbf_s)
    done, attempt = 0, 0
    while done < total_steps:
        target, step, failed = min(done + interval_steps, total_steps), done, False
        while step < target and not failed:
            failed = b.t + step_s > next_failure
            if not failed:
                step += 1
                b.steps(step, step, step_s)
        if not failed and b.t + ckpt_s <= next_failure:
            b.checkpoint(target, ckpt_s)
            done = target
            continue
        b.t = next_failure
        b.emit("job_end", outcome="failure")
        while True:
            next_failure = b.t + rng.expovariate(1 / mtbf_s)
            if b.t + recovery_s <= next_failure:
                break
            b.t = next_failure
        attempt += 1
        b.start(f"a{attempt}", wait=recovery_s, startup=0.0, load=0.0, loaded_step=done)
    b.end("finished")
    return b.events
