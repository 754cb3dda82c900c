import io
import subprocess
import sys
import textwrap
import time

from olmo_train.resilience.ledger import read_events
from olmo_train.resilience.watchdog import Watchdog


def _wait_for(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_heartbeats_keep_it_quiet_and_extend_covers_long_work():
    exits = []
    with Watchdog(0.3, 0.5, exit_fn=exits.append, backstop_s=None, stream=io.StringIO()) as wd:
        for step in range(8):
            time.sleep(0.1)
            wd.heartbeat(step)
        wd.extend(1.0)
        time.sleep(0.6)  # a "checkpoint" longer than the step timeout
        wd.heartbeat(8)
    assert exits == []


def test_fires_after_timeout_with_stacks_and_ledger(tmp_path):
    from olmo_train.resilience.ledger import GoodputLedger

    exits, stream = [], io.StringIO()
    ledger = GoodputLedger(tmp_path, attempt="a")
    wd = Watchdog(0.2, 0.2, ledger=ledger, exit_fn=exits.append, backstop_s=None, stream=stream).start()
    wd.heartbeat(41)
    assert _wait_for(lambda: exits == [4])
    wd.stop()
    assert "no heartbeat" in stream.getvalue() and "last step 41" in stream.getvalue()
    assert "test_fires_after_timeout_with_stacks_and_ledger" in stream.getvalue()  # the main thread's stack
    events = [(e["event"], e["step"], e.get("reason")) for e in read_events(tmp_path)]
    assert events == [("hang", 41, None), ("attempt_end", 41, "hang")]


def test_disabled_watchdog_never_fires():
    exits = []
    with Watchdog(0, exit_fn=exits.append):
        time.sleep(0.2)
    assert exits == []


def test_real_process_exits_4_and_dumps_stacks(tmp_path):
    code = textwrap.dedent(f"""
        import time
        from olmo_train.resilience.ledger import GoodputLedger
        from olmo_train.resilience.watchdog import Watchdog
        wd = Watchdog(0.5, 1.0, ledger=GoodputLedger({str(tmp_path)!r}, attempt="x")).start()
        wd.heartbeat(7)
        def stuck_in_collective():
            time.sleep(60)
        stuck_in_collective()
    """)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 4, proc.stderr
    assert time.monotonic() - t0 < 10
    assert "stuck_in_collective" in proc.stderr and "in _fire" in proc.stderr  # both threads
    assert [e["event"] for e in read_events(tmp_path)] == ["hang", "attempt_end"]


def test_backstop_ends_process_when_python_thread_cannot_run(tmp_path):
    # The watchdog thread never gets the GIL back while the main thread spins in one C call; the faulthandler
    # backstop (a C thread) still ends the process.
    code = textwrap.dedent("""
        import re
        from olmo_train.resilience.watchdog import Watchdog
        wd = Watchdog(0.3, 0.3, backstop_s=0.5).start()
        wd.heartbeat(1)
        re.match(r"(a+)+$", "a" * 40 + "b")  # catastrophic backtracking, holds the GIL for minutes
    """)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and time.monotonic() - t0 < 20
    assert "Timeout" in proc.stderr
