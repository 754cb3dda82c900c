"""The submitit launcher with submitit's local executor and the tiny model on 2 CPU ranks: completion, preemption
through submitit's own signal (USR2), and a failed attempt resubmitted by the supervisor."""

import signal
import threading
import time

import psutil
import pytest

from olmo_train.errors import ConfigError
from olmo_train.launch.submitit_launcher import SubmititConfig, launch
from olmo_train.resilience.goodput import analyze
from olmo_train.resilience.ledger import read_events
from tests.slurm.jobs import TINY, metrics, rank_process

pytestmark = pytest.mark.slow
CFG = SubmititConfig(executor="local", procs_per_node=2, timeout_min=10)
OVERRIDES = [*TINY, "trainer.max_steps=10"]


def _when_step(run_dir, step, action):
    def run():
        end = time.monotonic() + 240
        while time.monotonic() < end:
            if any(int(m.get("step", 0)) >= step for m in metrics(run_dir)):
                action()
                return
            time.sleep(0.2)
    threading.Thread(target=run, daemon=True).start()


def _submitit_task(job) -> psutil.Process:
    """The process that runs TrainTask (submitit's signal handlers live there), under the local controller."""
    end = time.monotonic() + 30
    while time.monotonic() < end:
        for child in psutil.Process(job._process.pid).children(recursive=True):
            if "submitit.core._submit" in " ".join(child.cmdline()):
                return child
        time.sleep(0.1)
    raise AssertionError("no submitit task process")


def test_config_validation():
    with pytest.raises(ConfigError, match="nodes=2"):
        SubmititConfig(executor="local", nodes=2)


def test_preemption_checkpoints_and_continues(tmp_path):
    run_dir = tmp_path / "run"
    jobs = []

    def on_submit(job):
        jobs.append(job)
        if len(jobs) == 1:
            _when_step(run_dir, 3, lambda: _submitit_task(job).send_signal(signal.SIGUSR2))

    result = launch(OVERRIDES, CFG, run_dir, on_submit=on_submit)
    assert result["outcome"] == "finished" and len(jobs) == 1  # submitit requeued the job itself
    events = read_events(run_dir)
    attempts = list(dict.fromkeys(e["attempt"] for e in events))
    assert attempts == [f"{jobs[0].job_id}.0", f"{jobs[0].job_id}.1"]
    (sig,) = [e for e in events if e["event"] == "signal"]
    ends = [e for e in events if e["event"] == "attempt_end"]
    assert [e["reason"] for e in ends] == ["preempted", "finished"]
    assert [e["step"] for e in events if e["event"] == "checkpoint_loaded"] == [sig["step"]]
    assert [m["step"] for m in metrics(run_dir)] == list(range(1, 11))
    report = analyze(events)
    assert report.overall.steps_lost == 0 and report.recoveries[0].kind == "preempted"


def test_failed_attempt_is_resubmitted_then_gives_up(tmp_path):
    run_dir = tmp_path / "run"
    jobs = []

    def on_submit(job):
        jobs.append(job)
        if len(jobs) <= 2:  # kill a rank in each of the first two attempts; max_restarts=1 allows one retry
            start = len(metrics(run_dir))
            _when_step(run_dir, start + 2, lambda: rank_process(run_dir, 1).send_signal(signal.SIGKILL))

    cfg = SubmititConfig(executor="local", procs_per_node=2, timeout_min=10, max_restarts=1)
    result = launch([*TINY, "trainer.max_steps=40"], cfg, run_dir, on_submit=on_submit)
    assert (result["decision"], result["outcome"]) == ("stop", "failure") and len(jobs) == 2
    decisions = [(e["outcome"], e["decision"]) for e in read_events(run_dir) if e["event"] == "job_end"]
    assert decisions == [("failure", "requeue"), ("failure", "stop")]
    assert analyze(read_events(run_dir)).overall.interruptions == 1


def test_requeue_after_preemption_only_for_hydra_tasks_on_slurm():
    from olmo_train.launch.submitit_launcher import requeue_after_preemption

    hydra_env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "1"}
    assert not requeue_after_preemption("finished", rank=0, env=hydra_env)
    assert not requeue_after_preemption("preempted", rank=1, env=hydra_env)
    assert not requeue_after_preemption("preempted", rank=0, env={**hydra_env, "OLMO_TRAIN_LAUNCHER": "submitit"})
    assert not requeue_after_preemption("preempted", rank=0, env={"SUBMITIT_EXECUTOR": "local"})
