import json
import threading

import pytest

from olmo_train.resilience.ledger import GoodputLedger, attempt_id, ledger_path, read_events


def test_event_fields_and_fsync_append(tmp_path):
    ledger = GoodputLedger(tmp_path, attempt="7.0", hardware="h100", world_size=16)
    ledger.event("attempt_start", step=None, pid=123)
    ledger.event("checkpoint_saved", step=100, duration_s=2.5)
    lines = ledger_path(tmp_path).read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["event"] == "attempt_start" and first["attempt"] == "7.0" and first["hardware"] == "h100"
    assert first["world_size"] == 16 and first["step"] is None and first["pid"] == 123
    assert json.loads(lines[1])["duration_s"] == 2.5


def test_only_rank0_writes(tmp_path):
    GoodputLedger(tmp_path, attempt="a", rank=1).event("attempt_start")
    assert not ledger_path(tmp_path).exists()


def test_first_step_written_at_once_then_batched(tmp_path):
    ledger = GoodputLedger(tmp_path, attempt="a", step_interval=3)
    t = 1000.0
    for step in range(1, 8):
        ledger.step_done(step, t, t + 0.5, loss=10.0 - step)
        t += 1.0
    steps = [e for e in read_events(tmp_path) if e["event"] == "step"]
    assert [(e["first_step"], e["step"], e["steps"]) for e in steps] == [(1, 1, 1), (2, 4, 3), (5, 7, 3)]
    assert steps[1]["duration_s"] == pytest.approx(1.5)
    assert steps[1]["start"] == 1001.0 and steps[1]["time"] == 1003.5 and steps[1]["loss"] == 6.0


def test_other_events_flush_pending_steps_first(tmp_path):
    ledger = GoodputLedger(tmp_path, attempt="a", step_interval=100)
    ledger.step_done(1, 0.0, 1.0)
    ledger.step_done(2, 1.0, 2.0)
    ledger.step_done(3, 2.0, 3.0)
    ledger.event("checkpoint_saved", step=3, duration_s=0.1)
    ledger.flush()  # nothing pending: writes nothing
    names = [(e["event"], e["step"]) for e in read_events(tmp_path)]
    assert names == [("step", 1), ("step", 3), ("checkpoint_saved", 3)]


def test_read_skips_torn_line(tmp_path):
    ledger = GoodputLedger(tmp_path, attempt="a")
    ledger.event("attempt_start")
    with open(ledger_path(tmp_path), "a") as f:
        f.write('{"time": 1, "event": "st')  # a crash mid-write
    assert [e["event"] for e in read_events(tmp_path)] == ["attempt_start"]
    assert read_events(tmp_path / "missing") == []


def test_concurrent_writers_interleave_whole_lines(tmp_path):
    ledgers = [GoodputLedger(tmp_path, attempt=str(i)) for i in range(4)]

    def write(ledger):
        for k in range(200):
            ledger.event("step", step=k, payload="x" * 200)

    threads = [threading.Thread(target=write, args=(ledger,)) for ledger in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = read_events(tmp_path)
    assert len(events) == 800
    for a in "0123":
        assert [e["step"] for e in events if e["attempt"] == a] == list(range(200))


@pytest.mark.parametrize("env, expected", [
    ({"OLMO_TRAIN_ATTEMPT": "sub-1", "SLURM_JOB_ID": "5"}, "sub-1"),
    ({"SLURM_JOB_ID": "42"}, "42.0"),
    ({"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "3"}, "42.3"),
], ids=["explicit", "slurm-first-run", "slurm-restart"])
def test_attempt_id(env, expected):
    assert attempt_id(env) == expected


def test_attempt_id_local_is_unique():
    assert attempt_id({}) != attempt_id({}) and len(attempt_id({})) == 12
