"""Runs `olmo-train` in subprocesses (torchrun with N gloo processes, or one plain process) for end-to-end tests."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from olmo_train.logging.jsonl import read_metrics

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")

# Tiny and fast: 8 sequences of 32 tokens per step, float32, a checkpoint every 3 steps, every step logged.
SMALL = ["trainer.seq_len=32", "trainer.global_batch_tokens=256", "trainer.micro_batch_size=2",
         "trainer.max_steps=10", "trainer.scheduler.warmup_steps=3", "checkpoint.interval=3", "checkpoint.keep=10",
         "logger.interval=1", "logger.wandb.mode=disabled", "distributed.param_dtype=float32", "data.prefetch=1"]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true", "DS_ACCELERATOR": "cpu",
            "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def command(run_dir: Path, nproc: int, overrides: list[str]) -> list[str]:
    app = ["-m", "olmo_train.train.app", f"run.dir={run_dir}", *SMALL, *overrides]
    if nproc == 0:  # one plain process, no launcher
        return [sys.executable, *app]
    return [str(TORCHRUN), "--standalone", f"--nproc-per-node={nproc}", *app]


def start(run_dir: Path, nproc: int, *overrides: str, **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen(command(run_dir, nproc, list(overrides)), cwd=REPO, env=env(**extra_env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run(run_dir: Path, nproc: int, *overrides: str, expect: int = 0, timeout: float = 300,
        **extra_env: str) -> str:
    """Runs to the end; asserts the exit code; returns the output."""
    proc = start(run_dir, nproc, *overrides, **extra_env)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"olmo-train timed out after {timeout}s:\n{out[-4000:]}")
    assert proc.returncode == expect, f"exit code {proc.returncode}, expected {expect}:\n{out[-6000:]}"
    return out


def records(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir / "metrics.jsonl")


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir)}


def signal_at_step(proc: subprocess.Popen, run_dir: Path, step: int, sig: int, *, group: bool,
                   timeout: float = 300) -> None:
    """Sends `sig` (to the whole process group, or to the process alone) once `step` is in metrics.jsonl."""
    deadline = time.monotonic() + timeout
    while max(losses(run_dir), default=0) < step:
        if proc.poll() is not None:
            raise AssertionError(f"olmo-train ended (code {proc.returncode}) before step {step}:\n"
                                 f"{proc.stdout.read()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"step {step} not reached in {timeout}s")
        time.sleep(0.02)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
