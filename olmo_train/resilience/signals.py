"""Preemption in three steps: the signal handler only records; ranks agree at a fixed step interval with one
all-reduce; then the trainer saves a checkpoint and exits with code 3 (pretrain.sh requeues on it)."""

import logging
import os
import signal
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from olmo_train.resilience.ledger import GoodputLedger

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 3
DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def preemption_signals(env: dict[str, str] | None = None) -> tuple[int, ...]:
    """USR1 and TERM, plus submitit's preemption signal (USR2, or $SUBMITIT_PREEMPT_SIGNAL) when the trainer runs
    inside a task of Hydra's submitit launcher."""
    env = os.environ if env is None else env
    sigs = list(DEFAULT_SIGNALS)
    if env.get("SUBMITIT_EXECUTOR") and not env.get("OLMO_TRAIN_LAUNCHER"):
        extra = getattr(signal, "SIG" + env.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG"),
                        signal.SIGUSR2)
        if extra not in sigs:
            sigs.append(extra)
    return tuple(sigs)


class PreemptionHandler:
    """Records USR1/TERM and tells every rank, at the same step, whether to stop.

    `should_stop(step)` is collective on steps that are multiples of `check_interval` (every rank must call it with
    the same step sequence); on other steps it returns the last agreed answer without communication. Without an
    initialised process group (one process) it answers from the local flag alone. Once True it stays True.
    """

    def __init__(self, check_interval: int = 10, *, signals: Iterable[int] | None = None,
                 ledger: "GoodputLedger | None" = None, device: Any = None) -> None:
        if check_interval < 1:
            raise ValueError(f"check_interval={check_interval}: must be >= 1 step")
        self.check_interval = check_interval
        self.signals = preemption_signals() if signals is None else tuple(signals)
        self.ledger = ledger
        self.device = device  # where the flag tensor lives; None = cuda for NCCL, else cpu
        self.signum: int | None = None
        self.received_at: float | None = None
        self._stop = False
        self._previous: dict[int, Any] = {}

    def install(self) -> "PreemptionHandler":
        """Registers the handlers (must run in the main thread, like every Python signal handler)."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionHandler.install() must be called from the main thread")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        # Only record: no I/O, no locks, no collectives inside a signal handler.
        if self.signum is None:
            self.signum, self.received_at = signum, time.time()

    @property
    def requested(self) -> bool:
        """Whether this process received a signal (not yet agreed across ranks)."""
        return self.signum is not None

    def should_stop(self, step: int) -> bool:
        if self._stop or step % self.check_interval != 0:
            return self._stop
        self._stop = self._agree(self.requested)
        if self._stop:
            name = signal.Signals(self.signum).name if self.signum is not None else "peer"
            log.warning("stop agreed at step %d after %s: checkpoint, then exit %d", step, name,
                        PREEMPTED_EXIT_CODE)
            if self.ledger is not None:
                self.ledger.event("signal", step=step, signal=name, received=self.received_at)
        return self._stop

    def _agree(self, local: bool) -> bool:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return local
        device = self.device
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
