"""slurm/pretrain.sh on a real two-node Slurm cluster (local, emulated nodes) with the tiny model on CPU:
completion, SIGKILL of one rank, preemption by USR1, a node marked down, a hang, an unhealthy node, max restarts,
and the goodput report checked against the scheduler's own timestamps."""

import json
import os
import signal
import statistics
import subprocess

import pytest

from olmo_train.resilience.goodput import analyze
from olmo_train.resilience.ledger import read_events
from tests.slurm.jobs import (REPO, TINY, Job, last_loss_per_step, metrics, node_update, rank_process, reached_step,
                              scheduler_times, submit, wait_restarts, watch)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
RUN_TIMEOUT = 240


@pytest.fixture(scope="module")
def interrupted_runs():
    """Run directories and jobs of the interrupted runs, for the goodput check at the end."""
    return {}


@pytest.fixture(scope="module")
def baseline(slurm_cluster, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("baseline")
    job = watch(submit(slurm_cluster, run_dir, TINY), RUN_TIMEOUT)
    return job


def assert_completed(job, restarts_at_least=0):
    assert job.final.get("JobState") == "COMPLETED", f"{job.states}\n{job.log[-4000:]}"
    assert int(job.final.get("Restarts", 0)) >= restarts_at_least, job.log[-3000:]
    ends = [e for e in read_events(job.run_dir) if e["event"] == "attempt_end"]
    assert ends and ends[-1]["reason"] == "finished" and ends[-1]["step"] == 12


def test_runs_to_completion_on_two_nodes(baseline):
    assert_completed(baseline)
    assert baseline.final["NodeList"] == "n[1-2]" and int(baseline.final["Restarts"]) == 0
    events = read_events(baseline.run_dir)
    assert {e["world_size"] for e in events if e["event"] == "step"} == {2}
    assert sorted(last_loss_per_step(baseline.run_dir)) == list(range(1, 13))
    assert (baseline.run_dir / "checkpoints" / "step12").is_dir()


def test_sigkill_of_one_rank_resumes_with_identical_losses(slurm_cluster, baseline, tmp_path, interrupted_runs):
    job = submit(slurm_cluster, tmp_path / "run", TINY)
    watch(job, RUN_TIMEOUT, until=reached_step(6))
    rank_process(job.run_dir, 1).send_signal(signal.SIGKILL)
    watch(job, RUN_TIMEOUT)
    assert_completed(job, restarts_at_least=1)
    events = read_events(job.run_dir)
    loaded = [e["step"] for e in events if e["event"] == "checkpoint_loaded"]
    assert loaded and loaded[0] in (4, 8)  # resumed from the last checkpoint before the kill
    first = events[0]["attempt"]
    done_before = max(e["step"] for e in events if e["event"] == "step" and e["attempt"] == first)
    assert done_before > loaded[0]  # the steps after that checkpoint were redone...
    assert analyze(events).overall.steps_lost == done_before - loaded[0]
    # ...and the curve continues bit for bit (metrics.jsonl keeps the first value of a redone step)
    assert last_loss_per_step(job.run_dir) == last_loss_per_step(baseline.run_dir)
    interrupted_runs["sigkill"] = job


def test_preemption_by_usr1_checkpoints_at_the_signal(slurm_cluster, tmp_path, interrupted_runs):
    job = submit(slurm_cluster, tmp_path / "run", TINY)
    watch(job, RUN_TIMEOUT, until=reached_step(5))
    subprocess.run(["scancel", "--signal=USR1", "--batch", job.job_id], env=slurm_cluster, check=True, timeout=30)
    watch(job, RUN_TIMEOUT)
    assert_completed(job, restarts_at_least=1)
    events = read_events(job.run_dir)
    (sig,) = [e for e in events if e["event"] == "signal"]
    first_attempt = sig["attempt"]
    saved = [e["step"] for e in events if e["event"] == "checkpoint_saved" and e["attempt"] == first_attempt]
    assert saved[-1] == sig["step"]  # a checkpoint at the signal
    end = [e for e in events if e["event"] == "attempt_end" and e["attempt"] == first_attempt]
    assert end[0]["reason"] == "preempted"
    loaded = [e["step"] for e in events if e["event"] == "checkpoint_loaded"]
    assert loaded == [sig["step"]]
    assert [m["step"] for m in metrics(job.run_dir)] == list(range(1, 13))  # no step lost, none redone
    assert analyze(events).overall.steps_lost == 0
    interrupted_runs["preempt"] = job


def test_node_marked_down_requeues_and_completes(slurm_cluster, tmp_path, interrupted_runs):
    job = submit(slurm_cluster, tmp_path / "run", TINY)
    watch(job, RUN_TIMEOUT, until=reached_step(5))
    assert node_update(slurm_cluster, "n2", "down").returncode == 0
    try:
        watch(job, RUN_TIMEOUT, until=wait_restarts(job, 1))
    finally:  # the node comes back (ReturnToService=2 also returns it once slurmd registers)
        node_update(slurm_cluster, "n2", "resume")
    watch(job, RUN_TIMEOUT)
    assert_completed(job, restarts_at_least=1)
    assert sorted(last_loss_per_step(job.run_dir)) == list(range(1, 13))
    interrupted_runs["node_down"] = job


@pytest.mark.parametrize("how", ["sigstop", "fault-hook"])
def test_hang_is_ended_by_the_watchdog_and_restarted(slurm_cluster, tmp_path, interrupted_runs, how):
    overrides = [*TINY, "resilience.watchdog_timeout_s=15"]
    if how == "sigstop":  # rank 1 freezes; rank 0 waits in a collective
        job = submit(slurm_cluster, tmp_path / "run", overrides)
        watch(job, RUN_TIMEOUT, until=reached_step(5))
        rank_process(job.run_dir, 1).send_signal(signal.SIGSTOP)
    else:  # the trainer's OLMO_TRAIN_FAULT hook: rank 0 never finishes step 6 (once per run)
        job = submit(slurm_cluster, tmp_path / "run", overrides, extra_env={"OLMO_TRAIN_FAULT": "hang@step6"})
    watch(job, RUN_TIMEOUT)
    assert_completed(job, restarts_at_least=1)
    events = read_events(job.run_dir)
    hang = [e for e in events if e["event"] == "hang"]
    assert hang and hang[0]["idle_s"] >= 15
    job_ends = [e for e in events if e["event"] == "job_end"]
    assert job_ends[0]["outcome"] == "failure" and job_ends[0]["decision"] == "requeue"
    assert "exiting with code 4" in job.log
    interrupted_runs[f"hang-{how}"] = job


def test_unhealthy_node_is_excluded(slurm_cluster, tmp_path):
    job = submit(slurm_cluster, tmp_path / "run", [*TINY, "trainer.max_steps=2"],
                 sbatch_args=("--nodes=1", "--nodelist=n2"), extra_env={"OLMO_HEALTHCHECK_FAIL": "n2"})
    watch(job, RUN_TIMEOUT)
    events = read_events(job.run_dir)
    (resubmitted,) = [e for e in events if e["event"] == "job_resubmitted"]
    assert resubmitted["excluded"] == ["n2"]
    (job_end,) = [e for e in events if e["event"] == "job_end" and e["attempt"] == f"{job.job_id}.0"]
    assert job_end["outcome"] == "unhealthy" and job_end["bad_nodes"] == ["n2"]
    new = type(job)(resubmitted["new_job_id"], job.run_dir, job.env)
    watch(new, RUN_TIMEOUT)
    assert new.final["JobState"] == "COMPLETED" and new.final["NodeList"] == "n1"
    assert new.final["ExcNodeList"] == "n2"
    assert [e["reason"] for e in read_events(job.run_dir) if e["event"] == "attempt_end"] == ["finished"]


def test_failures_stop_after_max_restarts(slurm_cluster, tmp_path):
    job = submit(slurm_cluster, tmp_path / "run", ["resilience.max_restarts=1"],
                 extra_env={"OLMO_TRAIN_ENTRY": "--no-python false"})
    watch(job, RUN_TIMEOUT)
    assert job.final["JobState"] == "FAILED" and int(job.final["Restarts"]) == 1, job.log
    decisions = [e["decision"] for e in read_events(job.run_dir) if e["event"] == "job_end"]
    assert decisions == ["requeue", "stop"]


def test_outside_a_job_it_submits_itself_with_the_profile(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()  # for the log file
    env = {**slurm_cluster, "OLMO_TRAIN_ENTRY": "--no-python true", "OLMO_HEALTHCHECK_ARGS": "--min-disk-gib 1",
           "OLMO_SBATCH_ARGS": f"--output={run_dir}/slurm.log"}
    env.pop("SLURM_JOB_ID", None)
    out = subprocess.run(["bash", str(REPO / "slurm" / "pretrain.sh"), "cluster=cpu", f"run.dir={run_dir}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Submitted batch job" in out.stdout, out.stderr
    job = Job(out.stdout.split()[-1], run_dir, env)
    watch(job, RUN_TIMEOUT)
    assert job.final["JobState"] == "COMPLETED" and job.final["NumNodes"] == "2"  # the cpu profile: 2 nodes
    (start,) = [e for e in read_events(run_dir) if e["event"] == "job_start"]
    assert start["nodes"] == ["n1", "n2"] and start["hardware"] == "cpu"


def test_goodput_report_matches_the_scheduler(interrupted_runs):
    if len(interrupted_runs) < 5:
        pytest.skip(f"needs the five interrupted runs; only {sorted(interrupted_runs)} completed")
    rows, recoveries, deviations = {}, [], []
    for name, job in interrupted_runs.items():
        report = analyze(read_events(job.run_dir))
        assert report.recoveries, name
        for k, r in enumerate(report.recoveries, start=1):
            submit_time, start_time = scheduler_times(job, k)
            assert start_time is not None, (name, job.samples)
            assert abs(r.scheduler_start - start_time) <= 1.0, (name, r.scheduler_start, start_time)
            if name != "node_down":  # the script requeued itself right after its last ledger event
                assert abs(r.failure_time - submit_time) <= 1.0, (name, r.failure_time, submit_time)
                assert abs(r.requeue_wait_s - (start_time - submit_time)) <= 1.0, name
            recoveries.append(r)
            deviations.append(abs(r.scheduler_start - start_time))
            if name != "node_down":
                deviations.append(abs(r.failure_time - submit_time))
        rows[name] = {"recovery_s": [round(r.recovery_s, 2) for r in report.recoveries],
                      **{p: round(v, 2) for p, v in report.overall.recovery_parts_median_s.items()},
                      "lost_steps": report.overall.steps_lost, "active_fraction": report.overall.active_fraction}
    median = statistics.median(r.recovery_s for r in recoveries)
    summary = {"median_recovery_s": median, "max_deviation_from_scheduler_s": max(deviations), "runs": rows}
    out = os.environ.get("OLMO_GOODPUT_RESULTS")
    if out:
        with open(out, "w") as f:
            json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))
    # The goal (median under 20 s on a quiet 2-core machine) is a benchmark, recorded in benchmarks/RESULTS.md;
    # here only a bound that no healthy recovery comes near, so a stuck requeue or start-up still fails.
    assert median < 120.0, rows
