"""A per-process hang watchdog: no heartbeat before the deadline -> stacks to the log, a `hang` ledger event,
exit code 4 (os._exit, so a thread stuck in a collective cannot keep the process alive) and Slurm restarts the job.

A second, GIL-free backstop (`faulthandler.dump_traceback_later(exit=True)`) fires `backstop_s` later in case
the Python thread cannot run at all (a C call holding the GIL); it exits with code 1, still ending the attempt.
"""

import faulthandler
import logging
import os
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Callable, TextIO

if TYPE_CHECKING:
    from olmo_train.resilience.ledger import GoodputLedger

log = logging.getLogger(__name__)

HANG_EXIT_CODE = 4


class Watchdog:
    """Starts armed with `startup_timeout_s`; each `heartbeat(step)` re-arms it with `timeout_s`.

    `extend(seconds)` pushes the deadline to at least `seconds` from now (around a checkpoint save, compile, a
    long evaluation); the next heartbeat restores the per-step limit. `timeout_s=0` disables it.
    """

    def __init__(self, timeout_s: float, startup_timeout_s: float | None = None, *,
                 ledger: "GoodputLedger | None" = None, exit_code: int = HANG_EXIT_CODE,
                 backstop_s: float | None = 60.0, stream: TextIO | None = None,
                 exit_fn: Callable[[int], None] = os._exit) -> None:
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s if startup_timeout_s is not None else timeout_s
        self.ledger = ledger
        self.exit_code = exit_code
        self.backstop_s = backstop_s
        self.stream = stream if stream is not None else sys.stderr
        self._exit = exit_fn
        self.step: int | None = None
        self.last_beat = time.monotonic()
        self._deadline = self.last_beat + self.startup_timeout_s
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.timeout_s > 0

    def start(self) -> "Watchdog":
        if not self.enabled or self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="olmo-watchdog", daemon=True)
        self._thread.start()
        self._arm_backstop()
        return self

    def heartbeat(self, step: int | None = None) -> None:
        now = time.monotonic()
        with self._cond:
            self.step, self.last_beat = step, now
            self._deadline = now + self.timeout_s
        self._arm_backstop()

    def extend(self, seconds: float | None = None) -> None:
        """Allows `seconds` (default: the start-up timeout) from now before the next heartbeat."""
        seconds = self.startup_timeout_s if seconds is None else seconds
        with self._cond:
            self._deadline = max(self._deadline, time.monotonic() + seconds)
        self._arm_backstop()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self.enabled:
            faulthandler.cancel_dump_traceback_later()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _arm_backstop(self) -> None:
        if self.enabled and self._thread is not None and self.backstop_s is not None:
            remaining = max(0.0, self._deadline - time.monotonic())
            faulthandler.dump_traceback_later(remaining + self.backstop_s, exit=True, file=self.stream)

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(timeout=min(remaining, 1.0))
            if self._stopped:
                return
        self._fire()

    def _fire(self) -> None:
        idle = time.monotonic() - self.last_beat
        msg = (f"watchdog: no heartbeat for {idle:.1f} s (last step {self.step}); dumping all thread stacks and "
               f"exiting with code {self.exit_code}")
        if logging.getLogger().handlers:  # the log file gets it too (else logging would print it twice)
            log.error(msg)
        try:
            print(msg, file=self.stream, flush=True)
            _dump_all_stacks(self.stream)
        except (OSError, ValueError):
            pass
        if self.ledger is not None:
            try:
                self.ledger.event("hang", step=self.step, idle_s=round(idle, 3))
                self.ledger.event("attempt_end", step=self.step, reason="hang", exit_code=self.exit_code)
            except OSError as exc:  # a full or vanished disk must not stop us from exiting
                log.error("watchdog: could not write the hang event: %s", exc)
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._exit(self.exit_code)


def _dump_all_stacks(stream: TextIO) -> None:
    """faulthandler's dump (async-safe, straight to the file descriptor) where the stream has one, else the same
    information formatted in Python (e.g. a StringIO in tests)."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        fd = None
    if fd is not None:
        faulthandler.dump_traceback(file=stream, all_threads=True)
        return
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        stream.write(f"Thread {ident:#x} ({names.get(ident, '?')}), most recent call last:\n")
        stream.write("".join(traceback.format_stack(frame)))
    stream.flush()
