import json

import pytest

from olmo_train.resilience.goodput import analyze
from olmo_train.resilience.ledger import GoodputLedger, read_events
from tests.resilience.synthetic import LedgerBuilder


def crash_and_preempt_run() -> list[dict]:
    """a0 trains 1-12 (checkpoints at 5, 10), crashes; a1 resumes at 10, is preempted at 15 (checkpoint);
    a2 resumes at 15 and finishes at 20."""
    b = LedgerBuilder()
    b.start("a0", startup=3.0, load=0.0, loaded_step=None)
    b.steps(1, 5), b.checkpoint(5), b.steps(6, 10), b.checkpoint(10), b.steps(11, 12)
    b.end(None, detect=1.5, job_outcome="failure")  # SIGKILL: no attempt_end; job_end 2 s after the last step
    b.start("a1", wait=8.0, startup=4.0, load=1.0, loaded_step=10)
    b.steps(11, 15), b.checkpoint(15)
    b.end("preempted", job_outcome="preempted")
    b.start("a2", wait=6.0, startup=4.0, load=1.0, loaded_step=15)
    b.steps(16, 20), b.checkpoint(20)
    b.end("finished", job_outcome="finished")
    return b.events


def test_recoveries_parts_and_lost_work():
    report = analyze(crash_and_preempt_run())
    r0, r1 = report.recoveries
    assert (r0.failed_attempt, r0.next_attempt, r0.kind) == ("a0", "a1", "crashed")
    assert (r1.kind, r1.lost_steps, r1.lost_s) == ("preempted", 0, 0.0)
    assert r0.requeue_wait_s == pytest.approx(8.0) and r0.startup_s == pytest.approx(4.0)
    assert r0.checkpoint_load_s == pytest.approx(1.0) and r0.first_step_s == pytest.approx(1.0)
    assert r0.recovery_s == pytest.approx(14.0) and r0.detection_s == pytest.approx(2.0)
    assert (r0.lost_steps, r0.lost_s) == (2, pytest.approx(2.0))
    assert r1.recovery_s == pytest.approx(6.0 + 4.0 + 1.0 + 1.0)


def test_summary_partitions_wall_time():
    s = analyze(crash_and_preempt_run()).overall
    assert s.steps_kept == 20 and s.steps_lost == 2 and s.checkpoints == 4 and s.attempts == 3
    assert s.active_s == pytest.approx(20.0) and s.lost_s == pytest.approx(2.0)
    assert s.checkpoint_s == pytest.approx(1.0)
    assert s.recovery_median_s == pytest.approx(13.0) and s.recovery_p90_s == pytest.approx(13.8)
    # other: a0's start-up 3 s and detection 2 s, then 0.5 s from a1's and a2's end to their job_end
    assert s.active_s + s.checkpoint_s + s.lost_s + s.recovery_s - s.first_steps_s + s.other_s == \
        pytest.approx(s.wall_s)
    assert s.other_s == pytest.approx(3.0 + 2.0 + 0.5 + 0.5)
    assert s.active_fraction == pytest.approx(20.0 / s.wall_s)


def test_failed_restart_belongs_to_the_recovery():
    b = LedgerBuilder()
    b.start("a0", startup=1.0, load=0.0, loaded_step=0)
    b.steps(1, 4), b.checkpoint(4)
    b.end("hang", job_outcome="failure")
    b.start("a1", wait=5.0, startup=2.0, load=0.0, loaded_step=None)  # dies during start-up
    b.end(None, job_outcome="failure")
    b.start("a2", wait=5.0, startup=2.0, load=1.0, loaded_step=4)
    b.steps(5, 6)
    b.end("finished")
    report = analyze(b.events)
    (r,) = report.recoveries
    assert (r.failed_attempt, r.next_attempt, r.kind) == ("a0", "a2", "hang")
    assert r.requeue_wait_s == pytest.approx(5.0) and r.failed_restarts_s == pytest.approx(2.5 + 5.0)
    assert r.recovery_s == pytest.approx(r.requeue_wait_s + r.failed_restarts_s + 2.0 + 1.0 + 1.0)


def test_batched_step_events_are_apportioned():
    b = LedgerBuilder()
    b.start("a0", startup=0.0, load=0.0, loaded_step=0)
    b.steps(1, 9, per_event=4)  # events cover 1, 2-5, 6-9
    b.end(None, job_outcome="failure")
    b.start("a1", wait=1.0, startup=0.0, load=0.0, loaded_step=3)  # a checkpoint at 3 (inside the 2-5 event)
    b.steps(4, 9)
    b.end("finished")
    report = analyze(b.events)
    assert report.recoveries[0].lost_steps == 6 and report.recoveries[0].lost_s == pytest.approx(6.0)
    assert report.overall.steps_kept == 9


def test_segments_per_hardware():
    b = LedgerBuilder(hardware="h100", world_size=16)
    b.start("h0", startup=1.0, load=0.0, loaded_step=0)
    b.steps(1, 10), b.checkpoint(10)
    b.end("preempted", job_outcome="preempted")
    b.hardware, b.world_size = "b200", 8
    b.start("b0", wait=30.0, startup=2.0, load=1.0, loaded_step=10)
    b.steps(11, 30, step_s=0.5), b.checkpoint(30)
    b.end("finished")
    report = analyze(b.events)
    assert list(report.segments) == ["h100", "b200"]
    h, bb = report.segments["h100"], report.segments["b200"]
    assert h.active_s == pytest.approx(10.0) and h.interruptions == 0
    assert bb.active_s == pytest.approx(10.0) and bb.interruptions == 1 and bb.steps_kept == 20
    assert report.overall.active_s == pytest.approx(20.0)
    assert bb.wall_s == pytest.approx(30 + 3 + 10 + 0.25)  # from the preemption that led into it
    assert bb.other_s == pytest.approx(0.0)


def test_real_ledger_round_trip(tmp_path):
    ledger = GoodputLedger(tmp_path, attempt="9.0", step_interval=3)
    ledger.event("job_start", scheduler_start=100.0)
    ledger.event("attempt_start")
    ledger.event("init_done")
    for s in range(1, 8):
        ledger.step_done(s, 200.0 + s, 200.5 + s)
    ledger.event("checkpoint_saved", step=7, blocking_s=0.2)
    ledger.event("attempt_end", step=7, reason="finished")
    report = analyze(read_events(tmp_path))
    assert report.overall.steps_kept == 7 and report.overall.active_s == pytest.approx(3.5)
    assert report.overall.checkpoint_s == pytest.approx(0.2)  # the trainer's `blocking_s` spelling
    json.dumps(report.to_dict())


def test_empty_ledger():
    report = analyze([])
    assert report.overall.wall_s == 0 and report.recoveries == [] and report.overall.active_fraction == 0
