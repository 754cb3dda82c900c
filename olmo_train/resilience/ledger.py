"""The goodput ledger: an append-only, fsync'd JSON-lines file of what every attempt of a run did and when.

One file per run, `RUN/goodput/events.jsonl`, shared by every attempt and hardware segment (DESIGN.md). Writers are
rank 0 of the trainer and the Slurm batch script (`python -m olmo_train.resilience.ledger_cli`). Each line is one
complete JSON object written with a single `write` on an O_APPEND descriptor, so concurrent writers interleave whole
lines; a line torn by a crash is skipped by `read_events`.
"""

import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LEDGER_RELPATH = Path("goodput") / "events.jsonl"
END_REASONS = ("finished", "preempted", "failed", "hang")


def ledger_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LEDGER_RELPATH


def attempt_id(env: dict[str, str] | None = None) -> str:
    """The attempt's name, the same in the batch script and in every rank of the trainer.

    `OLMO_TRAIN_ATTEMPT` if set (the submitit launcher sets it), else `<SLURM_JOB_ID>.<SLURM_RESTART_COUNT or 0>`
    (Slurm leaves the restart count unset on the first run), else a fresh uuid (a local run).
    """
    env = os.environ if env is None else env
    if env.get("OLMO_TRAIN_ATTEMPT"):
        return env["OLMO_TRAIN_ATTEMPT"]
    if env.get("SLURM_JOB_ID"):
        return f"{env['SLURM_JOB_ID']}.{env.get('SLURM_RESTART_COUNT') or 0}"
    return uuid.uuid4().hex[:12]


def read_events(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete events of a run in file order; a torn or non-JSON line is skipped with a warning."""
    path = ledger_path(run_dir)
    if not path.exists():
        return []
    events = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping a torn ledger line (a crash mid-write)", path, lineno)
                continue
            if isinstance(record, dict) and "event" in record and "time" in record:
                events.append(record)
    return events


class GoodputLedger:
    """Appends events of one attempt; only rank 0 writes (other ranks' calls are no-ops).

    Steps are batched: `step_done` writes the first step of the attempt at once and then one `step` event per
    `step_interval` steps, carrying `first_step`, `steps` and `duration_s` (summed step wall time) of the steps it
    covers. Any other event first flushes the pending steps, so the ledger never hides work behind a checkpoint.
    """

    def __init__(self, run_dir: str | os.PathLike, attempt: str | None = None, hardware: str = "cpu",
                 world_size: int = 1, *, rank: int = 0, step_interval: int = 10) -> None:
        self.path = ledger_path(run_dir)
        self.attempt = attempt or attempt_id()
        self.hardware = hardware
        self.world_size = world_size
        self.enabled = rank == 0
        self.step_interval = max(1, step_interval)
        self._lock = threading.Lock()  # the watchdog thread writes too
        self._pending: dict[str, Any] | None = None
        self._steps_written = 0
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def event(self, name: str, *, step: int | None = None, **fields: Any) -> dict[str, Any] | None:
        """Appends one event (after flushing pending steps) and returns it; None on ranks other than 0."""
        if not self.enabled:
            return None
        with self._lock:
            self._flush_locked()
            return self._write_locked(name, step, fields)

    def step_done(self, step: int, start: float, end: float, **fields: Any) -> None:
        """Records one completed training step `step` that ran from `start` to `end` (unix seconds).

        Extra fields (e.g. `loss`) of the newest step are kept on the event that covers it.
        """
        if not self.enabled:
            return
        with self._lock:
            p = self._pending
            if p is None:
                p = self._pending = {"first_step": step, "start": start, "steps": 0, "duration_s": 0.0}
            p["steps"] += 1
            p["duration_s"] += end - start
            p["last_step"], p["end"] = step, end
            p.update(fields)
            if self._steps_written == 0 or p["steps"] >= self.step_interval:
                self._flush_locked()

    def flush(self) -> None:
        """Writes pending steps now (before a checkpoint save, at exit)."""
        if self.enabled:
            with self._lock:
                self._flush_locked()

    def _flush_locked(self) -> None:
        p, self._pending = self._pending, None
        if p is None:
            return
        step, end = p.pop("last_step"), p.pop("end")
        p["duration_s"] = round(p["duration_s"], 6)
        self._write_locked("step", step, p, when=end)
        self._steps_written += p["steps"]

    def _write_locked(self, name: str, step: int | None, fields: dict[str, Any],
                      when: float | None = None) -> dict[str, Any]:
        record = {"time": time.time() if when is None else when, "event": name, "attempt": self.attempt,
                  "hardware": self.hardware, "world_size": self.world_size, "step": step, **fields}
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return record
