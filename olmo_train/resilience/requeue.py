"""What to do after an attempt ends: finish, requeue, or stop; decided from the ledger, not from exit codes alone.

torchrun turns every worker exit code into its own 1, so the trainer's `attempt_end` event (reason finished,
preempted, failed, hang) is the primary source; the srun exit code and whether the batch script was signalled
fill in when the trainer died without writing one (SIGKILL, OOM, a lost node).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Action = Literal["finish", "requeue", "stop"]
Outcome = Literal["finished", "preempted", "failure", "unhealthy"]


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    outcome: Outcome
    failures: int
    """Failed attempts of the run so far, this one included."""
    reason: str


def trainer_end(events: Sequence[dict[str, Any]], attempt: str) -> dict[str, Any] | None:
    """The last `attempt_end` the trainer (or its watchdog) wrote for `attempt`."""
    ends = [e for e in events if e["event"] == "attempt_end" and e.get("attempt") == attempt]
    return ends[-1] if ends else None


def previous_failures(events: Sequence[dict[str, Any]], attempt: str) -> int:
    return sum(1 for e in events if e["event"] == "job_end" and e.get("outcome") == "failure"
               and e.get("attempt") != attempt)


def decide(events: Sequence[dict[str, Any]], attempt: str, exit_code: int, *, max_restarts: int,
           signalled: bool = False) -> Decision:
    end = trainer_end(events, attempt)
    reason = end.get("reason") if end else None
    failures = previous_failures(events, attempt)
    if reason == "finished" or (end is None and exit_code == 0 and not signalled):
        return Decision("finish", "finished", failures, "training finished")
    if reason == "preempted" or (signalled and reason is None):
        why = "checkpointed after a signal" if reason else "signalled; the trainer wrote no end event"
        return Decision("requeue", "preempted", failures, f"preempted ({why})")
    failures += 1
    what = reason or f"died without an end event (exit code {exit_code})"
    if failures <= max_restarts:
        return Decision("requeue", "failure", failures, f"attempt {what}; failure {failures} of {max_restarts} allowed")
    return Decision("stop", "failure", failures,
                    f"attempt {what}; {failures} failures exceed max_restarts={max_restarts}: giving up")
