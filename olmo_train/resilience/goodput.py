"""Goodput analytics over a run's ledger (DESIGN.md's definitions), per hardware segment and overall.

Wall time from the first event to the last is split into (the first step after a recovery counts in both active
and recovery time, and once in the split): active (steps whose results were kept), checkpoint
(blocking save time), lost (steps redone after an interruption), recovery (an interrupted attempt's last event to
the next attempt's first completed step) and other (the first start-up, the time between the last progress of an
interrupted attempt and its last event, evaluation, idle). Every interruption (crash, hang, preemption, node
loss) gets a recovery record with its parts: requeue wait (to the scheduler's start of the next attempt), start-up
(to `init_done`), checkpoint load (to `checkpoint_loaded`) and first step (to the end of the first step).
"""

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PROGRESS_EVENTS = ("step", "checkpoint_saved")
RECOVERY_PARTS = ("requeue_wait_s", "startup_s", "checkpoint_load_s", "first_step_s", "failed_restarts_s")


@dataclass(slots=True)
class StepSpan:
    first: int
    last: int
    start: float
    end: float
    duration_s: float

    def fraction_up_to(self, step: float) -> float:
        """Fraction of this span's steps that are <= step (spans are apportioned evenly across their steps)."""
        n = self.last - self.first + 1
        return min(max(step - self.first + 1, 0), n) / n


@dataclass(slots=True)
class Attempt:
    name: str
    hardware: str = "?"
    world_size: int = 0
    first_time: float = 0.0
    last_time: float = 0.0
    scheduler_start: float | None = None
    submit_time: float | None = None
    trainer_start: float | None = None
    init_done: float | None = None
    loaded_time: float | None = None
    loaded_step: int | None = None
    spans: list[StepSpan] = field(default_factory=list)
    checkpoints: list[tuple[float, int, float]] = field(default_factory=list)  # (time, step, blocking seconds)
    end_reason: str | None = None
    job_outcome: str | None = None
    last_progress: float | None = None

    @property
    def outcome(self) -> str:
        """finished | preempted | hang | failed | crashed (no end event) | unhealthy | running."""
        if self.end_reason in ("finished", "preempted", "hang", "failed"):
            return self.end_reason
        if self.job_outcome == "unhealthy":
            return "unhealthy"
        if self.job_outcome == "preempted":
            return "preempted"
        return "crashed"

    @property
    def first_step_end(self) -> float | None:
        return self.spans[0].start + _first_step_duration(self.spans[0]) if self.spans else None

    @property
    def start_step(self) -> int:
        return self.loaded_step or 0


def _first_step_duration(span: StepSpan) -> float:
    return span.duration_s / (span.last - span.first + 1)


@dataclass(slots=True)
class Recovery:
    failed_attempt: str
    next_attempt: str
    kind: str
    hardware: str
    failure_time: float
    """The interrupted attempt's last ledger event (unix s)."""
    scheduler_start: float | None
    first_step_time: float
    recovery_s: float
    requeue_wait_s: float
    startup_s: float
    checkpoint_load_s: float
    first_step_s: float
    failed_restarts_s: float
    detection_s: float
    """Last progress of the interrupted attempt to its last event (not part of the recovery)."""
    launch_s: float | None
    """Of the start-up: the scheduler's start to the trainer's `attempt_start` (batch script, health check, srun,
    torchrun, imports, process group); the rest of the start-up is the trainer's own build."""
    lost_steps: int
    lost_s: float


@dataclass(slots=True)
class Summary:
    wall_s: float = 0.0
    active_s: float = 0.0
    checkpoint_s: float = 0.0
    lost_s: float = 0.0
    recovery_s: float = 0.0
    first_steps_s: float = 0.0
    """The first step after each recovery: in both active and recovery time (DESIGN.md's definitions)."""
    other_s: float = 0.0
    steps_kept: int = 0
    steps_lost: int = 0
    checkpoints: int = 0
    attempts: int = 0
    interruptions: int = 0
    recovery_median_s: float | None = None
    recovery_p90_s: float | None = None
    recovery_parts_median_s: dict[str, float] = field(default_factory=dict)

    @property
    def active_fraction(self) -> float:
        return self.active_s / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(slots=True)
class GoodputReport:
    overall: Summary
    segments: dict[str, Summary]
    recoveries: list[Recovery]
    attempts: list[Attempt]

    def to_dict(self) -> dict[str, Any]:
        def summary(s: Summary) -> dict[str, Any]:
            return {**asdict(s), "active_fraction": s.active_fraction}

        return {"overall": summary(self.overall), "segments": {k: summary(v) for k, v in self.segments.items()},
                "recoveries": [asdict(r) for r in self.recoveries],
                "attempts": [{"name": a.name, "hardware": a.hardware, "world_size": a.world_size,
                              "outcome": a.outcome, "start": a.first_time, "end": a.last_time,
                              "loaded_step": a.loaded_step, "last_step": a.spans[-1].last if a.spans else None}
                             for a in self.attempts]}


def group_attempts(events: Sequence[dict[str, Any]]) -> list[Attempt]:
    """Attempts in order of their first event, each with what the ledger says it did."""
    attempts: dict[str, Attempt] = {}
    for e in sorted(events, key=lambda e: e["time"]):
        name = str(e.get("attempt"))
        a = attempts.get(name)
        if a is None:
            a = attempts[name] = Attempt(name=name, first_time=e["time"])
        a.last_time = max(a.last_time, e["time"])
        if e.get("hardware"):
            a.hardware = e["hardware"]
        if e.get("world_size"):
            a.world_size = int(e["world_size"])
        _apply(a, e)
    return list(attempts.values())


def _apply(a: Attempt, e: dict[str, Any]) -> None:
    kind = e["event"]
    if kind == "job_start":
        a.scheduler_start, a.submit_time = e.get("scheduler_start"), e.get("submit_time")
    elif kind == "attempt_start":
        a.trainer_start = e["time"]
    elif kind == "init_done":
        a.init_done = e["time"]
    elif kind == "checkpoint_loaded":
        a.loaded_time, a.loaded_step = e["time"], int(e.get("step") or 0)
    elif kind == "step":
        n = int(e.get("steps", 1))
        duration = float(e.get("duration_s", 0.0))
        start = float(e.get("start", e["time"] - duration))
        a.spans.append(StepSpan(int(e.get("first_step", e["step"] - n + 1)), int(e["step"]), start, e["time"],
                                duration))
    elif kind == "checkpoint_saved":
        blocking = e.get("duration_s", e.get("blocking_s"))
        a.checkpoints.append((e["time"], int(e["step"]), float(blocking or 0.0)))
    elif kind == "attempt_end":
        a.end_reason = e.get("reason")
    elif kind == "job_end":
        a.job_outcome = e.get("outcome")
    if kind in PROGRESS_EVENTS:
        a.last_progress = e["time"]


def kept_limits(attempts: list[Attempt]) -> list[float]:
    """For each attempt, the highest step whose result was kept: the step the next attempt that loaded a
    checkpoint resumed from (inf for the last attempt, or when no later attempt resumed)."""
    limits = []
    for i in range(len(attempts)):
        later = [b.loaded_step for b in attempts[i + 1:] if b.loaded_time is not None]
        limits.append(float(later[0]) if later else float("inf"))
    return limits


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _recoveries(attempts: list[Attempt], limits: list[float]) -> list[Recovery]:
    out = []
    for i, a in enumerate(attempts):
        if a.outcome == "finished" or i + 1 >= len(attempts):
            continue
        if i > 0 and not a.spans and attempts[i - 1].outcome != "finished":
            continue  # a failed restart: its time belongs to the recovery that began before it
        nxt = next((b for b in attempts[i + 1:] if b.spans), None)
        if nxt is None:
            continue  # not recovered (yet)
        first_end = nxt.first_step_end
        t_sched = nxt.scheduler_start if nxt.scheduler_start is not None else nxt.first_time
        t_init = nxt.init_done if nxt.init_done is not None else t_sched
        t_loaded = nxt.loaded_time if nxt.loaded_time is not None else t_init
        first_next = attempts[i + 1]
        first_next_sched = (first_next.scheduler_start if first_next.scheduler_start is not None
                            else first_next.first_time)
        failed_restarts = t_sched - first_next_sched if first_next is not nxt else 0.0
        lost_steps, lost_s = _lost(a, limits[i])
        out.append(Recovery(
            failed_attempt=a.name, next_attempt=nxt.name, kind=a.outcome, hardware=nxt.hardware,
            failure_time=a.last_time, scheduler_start=nxt.scheduler_start, first_step_time=first_end,
            recovery_s=first_end - a.last_time, requeue_wait_s=first_next_sched - a.last_time,
            startup_s=t_init - t_sched, checkpoint_load_s=t_loaded - t_init, first_step_s=first_end - t_loaded,
            failed_restarts_s=failed_restarts,
            detection_s=a.last_time - (a.last_progress if a.last_progress is not None else a.last_time),
            launch_s=nxt.trainer_start - t_sched if nxt.trainer_start is not None else None,
            lost_steps=lost_steps, lost_s=lost_s))
    return out


def _lost(a: Attempt, limit: float) -> tuple[int, float]:
    steps, seconds = 0, 0.0
    for span in a.spans:
        lost_fraction = 1.0 - span.fraction_up_to(limit)
        steps += round(lost_fraction * (span.last - span.first + 1))
        seconds += lost_fraction * span.duration_s
    return steps, seconds


def _summarize(attempts: list[Attempt], limits: list[float], recoveries: list[Recovery]) -> Summary:
    s = Summary(attempts=len(attempts), interruptions=len(recoveries))
    if not attempts:
        return s
    start = min([a.first_time for a in attempts] + [r.failure_time for r in recoveries])
    s.wall_s = max(a.last_time for a in attempts) - start
    for a, limit in zip(attempts, limits):
        for span in a.spans:
            kept = span.fraction_up_to(limit)
            s.active_s += kept * span.duration_s
            s.steps_kept += round(kept * (span.last - span.first + 1))
        s.checkpoint_s += sum(c[2] for c in a.checkpoints)
        s.checkpoints += len(a.checkpoints)
    s.lost_s = sum(r.lost_s for r in recoveries)
    s.steps_lost = sum(r.lost_steps for r in recoveries)
    s.recovery_s = sum(r.recovery_s for r in recoveries)
    s.first_steps_s = sum(r.first_step_s for r in recoveries)
    s.other_s = s.wall_s - s.active_s - s.checkpoint_s - s.lost_s - s.recovery_s + s.first_steps_s
    if recoveries:
        times = [r.recovery_s for r in recoveries]
        s.recovery_median_s = statistics.median(times)
        s.recovery_p90_s = _percentile(times, 90)
        s.recovery_parts_median_s = {p: statistics.median(getattr(r, p) for r in recoveries)
                                     for p in RECOVERY_PARTS}
    return s


def analyze(events: Sequence[dict[str, Any]]) -> GoodputReport:
    """The goodput report of a run's ledger events (see `olmo_train.resilience.ledger.read_events`)."""
    attempts = group_attempts(events)
    limits = kept_limits(attempts)
    recoveries = _recoveries(attempts, limits)
    overall = _summarize(attempts, limits, recoveries)
    segments = {}
    for hw in dict.fromkeys(a.hardware for a in attempts):
        idx = [i for i, a in enumerate(attempts) if a.hardware == hw]
        seg_attempts = [attempts[i] for i in idx]
        names = {a.name for a in seg_attempts}
        segments[hw] = _summarize(seg_attempts, [limits[i] for i in idx],
                                  [r for r in recoveries if r.next_attempt in names])
    return GoodputReport(overall=overall, segments=segments, recoveries=recoveries, attempts=attempts)
