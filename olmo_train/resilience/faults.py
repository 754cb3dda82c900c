"""Test-only fault injection, read from the environment variable OLMO_TRAIN_FAULT.

Grammar: comma-separated `KIND@stepN[:rankR]`, e.g. `hang@step7`, `kill@step5:rank1`, `preempt@step4`.
Kinds: `hang` (the step never finishes: the watchdog must end the attempt), `kill` (SIGKILL of this rank),
`exit` (os._exit(1), a crash without Python clean-up), `raise` (RuntimeError, the normal failure path),
`preempt` (SIGUSR1 to this process, the preemption path). The rank defaults to 0.

Each fault fires once per run, not once per attempt (a restarted attempt passes the same step again): the
firing rank first creates `RUN/goodput/faults/<KIND@stepN:rankR>` exclusively and skips the fault if it exists.
The trainer calls `maybe_inject_fault(step, rank=..., run_dir=...)` at the start of every step.
"""

import os
import re
import signal
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from olmo_train.errors import ConfigError

FAULT_ENV = "OLMO_TRAIN_FAULT"
KINDS = ("hang", "kill", "exit", "raise", "preempt")
_SPEC = re.compile(r"^(?P<kind>[a-z]+)@step(?P<step>\d+)(?::rank(?P<rank>\d+))?$")


class InjectedFault(RuntimeError):
    """Raised by the `raise` fault."""


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    step: int
    rank: int = 0

    @property
    def name(self) -> str:
        return f"{self.kind}@step{self.step}:rank{self.rank}"


def parse_faults(spec: str) -> tuple[Fault, ...]:
    faults = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = _SPEC.match(part)
        if m is None or m["kind"] not in KINDS:
            raise ConfigError(f"{FAULT_ENV}={spec!r}: {part!r} is not KIND@stepN[:rankR] with KIND in {KINDS}")
        faults.append(Fault(m["kind"], int(m["step"]), int(m["rank"] or 0)))
    return tuple(faults)


@lru_cache(maxsize=4)
def _faults_from(spec: str) -> tuple[Fault, ...]:
    return parse_faults(spec)


def maybe_inject_fault(step: int, *, rank: int, run_dir: str | os.PathLike) -> None:
    """Fires the fault planned for (`step`, `rank`) unless it already fired in this run; else does nothing."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    for fault in _faults_from(spec):
        if fault.step == step and fault.rank == rank and _claim(fault, Path(run_dir)):
            _fire(fault)


def _claim(fault: Fault, run_dir: Path) -> bool:
    marker = run_dir / "goodput" / "faults" / fault.name
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.write(fd, f"{time.time()}\n".encode())
    os.fsync(fd)
    os.close(fd)
    return True


def _fire(fault: Fault) -> None:
    print(f"{FAULT_ENV}: injecting {fault.name}", flush=True)
    if fault.kind == "hang":
        while True:
            time.sleep(3600)
    elif fault.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault.kind == "exit":
        os._exit(1)
    elif fault.kind == "raise":
        raise InjectedFault(f"{FAULT_ENV}: injected failure {fault.name}")
    elif fault.kind == "preempt":
        os.kill(os.getpid(), signal.SIGUSR1)
