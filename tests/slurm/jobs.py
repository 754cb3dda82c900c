"""Submitting slurm/pretrain.sh to the local cluster and watching it the way the scheduler sees it."""

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from olmo_train.launch.slurm_job import slurm_time
from olmo_train.logging.jsonl import read_metrics

REPO = Path(__file__).resolve().parents[2]
# The tiny model on 2 CPU ranks: ~0.5 s per step, checkpoints at 4, 8, 12.
TINY = ["distributed=fsdp2", "trainer.max_steps=12", "trainer.global_batch_tokens=512", "trainer.seq_len=64",
        "checkpoint.interval=4", "logger.wandb.mode=disabled", "resilience.ledger_step_interval=1",
        "resilience.signal_check_interval=1", "resilience.watchdog_timeout_s=90",
        "resilience.watchdog_startup_timeout_s=300"]
HEALTH = "--min-disk-gib 1 --min-mem-gib 0.5 --stray-grace-s 15"


@dataclass
class Job:
    job_id: str
    run_dir: Path
    env: dict
    samples: dict[int, dict] = field(default_factory=dict)  # Restarts -> last scontrol fields seen
    states: list[str] = field(default_factory=list)
    final: dict = field(default_factory=dict)

    @property
    def log(self) -> str:
        path = self.run_dir / "slurm.log"
        return path.read_text(errors="replace") if path.exists() else ""


def scontrol_job(job_id: str, env: dict) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id, "-o"], env=env, capture_output=True, text=True,
                         timeout=30).stdout
    return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)


def submit(env: dict, run_dir: Path, overrides: list[str], *, sbatch_args: tuple[str, ...] = (),
           extra_env: dict | None = None) -> Job:
    run_dir.mkdir(parents=True, exist_ok=True)
    job_env = {**env, "OLMO_HEALTHCHECK_ARGS": HEALTH, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    out = subprocess.run(["sbatch", "--parsable", f"--output={run_dir}/slurm.log", *sbatch_args,
                          str(REPO / "slurm" / "pretrain.sh"), f"run.dir={run_dir}", *overrides],
                         cwd=REPO, env=job_env, capture_output=True, text=True, timeout=60, check=True)
    return Job(out.stdout.strip().split(";")[0], run_dir, job_env)


def watch(job: Job, timeout: float, until=None) -> Job:
    """Polls scontrol every 0.2 s until the job is gone from the queue (or `until(job)` is true); records, per
    restart count, the scheduler's SubmitTime and StartTime."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        fields = scontrol_job(job.job_id, job.env)
        if fields:
            restarts = int(fields.get("Restarts", 0))
            job.samples.setdefault(restarts, {}).update(
                {k: fields.get(k) for k in ("SubmitTime", "StartTime", "EligibleTime", "JobState", "NodeList")})
            if not job.states or job.states[-1] != fields.get("JobState"):
                job.states.append(fields.get("JobState"))
            job.final = fields
            if fields.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
                return job
        if until is not None and until(job):
            return job
        time.sleep(0.2)
    subprocess.run(["scancel", job.job_id], env=job.env, timeout=30)
    raise AssertionError(f"job {job.job_id} did not finish in {timeout} s; states {job.states}\n{job.log[-3000:]}")


def metrics(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir / "metrics.jsonl")


def last_loss_per_step(run_dir: Path) -> dict[int, float]:
    return {int(m["step"]): m["loss"] for m in metrics(run_dir) if "loss" in m}


def reached_step(step: int):
    return lambda job: any(int(m.get("step", 0)) >= step for m in metrics(job.run_dir))


def rank_process(run_dir: Path, rank: int) -> psutil.Process:
    """The trainer process of `rank` (a torchrun worker: its environment has RANK)."""
    needle = f"run.dir={run_dir}"
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if needle in (proc.info["cmdline"] or []) and proc.environ().get("RANK") == str(rank):
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise AssertionError(f"no rank {rank} process of {run_dir}")


def scheduler_times(job: Job, restarts: int) -> tuple[float | None, float | None]:
    """(SubmitTime, StartTime) the scheduler reported for the run with this restart count."""
    s = job.samples.get(restarts, {})
    return slurm_time(s.get("SubmitTime")), slurm_time(s.get("StartTime"))


def wait_restarts(job: Job, n: int):
    return lambda j: int(j.final.get("Restarts", 0)) >= n and j.final.get("JobState") == "PENDING"


def env_without(env: dict, *names: str) -> dict:
    return {k: v for k, v in env.items() if k not in names}


def node_update(env: dict, node: str, state: str) -> subprocess.CompletedProcess:
    return subprocess.run(["scontrol", "update", f"nodename={node}", f"state={state}", "reason=olmo-test"],
                          env=env, capture_output=True, text=True, timeout=30)


def on_path(env: dict) -> dict:
    return {**env, "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"}
