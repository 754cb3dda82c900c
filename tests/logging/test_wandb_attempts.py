"""A run preempted by SIGUSR1 (checkpoint, exit 3) and continued: its offline W&B files, read back, hold exactly
one loss per step across both attempts, equal to metrics.jsonl; no secret from the environment is written."""

import json
import signal

import pytest

from olmo_train.logging.wandb_reader import read_run_history, run_files, wait_until_finished
from tests.train import launch

pytestmark = pytest.mark.slow

SECRETS = {"WANDB_API_KEY": "local-0123456789abcdef0123456789abcdef01234567", "HF_TOKEN": "hf_sekritSEKRIT123"}


def test_preempted_run_has_one_wandb_loss_per_step(tmp_path):
    opts = ["distributed=single", "logger.wandb.mode=offline", "resilience.signal_check_interval=1"]
    proc = launch.start(tmp_path, 0, *opts, **SECRETS)
    launch.signal_at_step(proc, tmp_path, 4, signal.SIGUSR1, group=False)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 3, out[-4000:]
    stopped = max(launch.losses(tmp_path))
    assert (tmp_path / "checkpoints" / f"step{stopped}").is_dir() and stopped < 10
    launch.run(tmp_path, 0, *opts, **SECRETS)

    run_id = (tmp_path / "wandb" / "run_id").read_text().strip()
    files = run_files(tmp_path / "wandb", run_id)
    assert len(files) == 2 and all(wait_until_finished(f) for f in files)
    history = read_run_history(tmp_path / "wandb", run_id)
    steps = [row["_step"] for row in history if "loss" in row]
    assert steps == list(range(1, 11))
    assert {row["_step"]: row["loss"] for row in history if "loss" in row} == launch.losses(tmp_path)

    ends = [json.loads(line) for line in (tmp_path / "goodput/events.jsonl").read_text().splitlines()
            if '"attempt_end"' in line]
    assert [e["reason"] for e in ends] == ["preempted", "finished"]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for value in SECRETS.values():
                assert value.encode() not in data, f"{value} leaked into {path}"


def test_online_wandb_that_cannot_start_falls_back_to_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # online without a key fails at once
    out = launch.run(tmp_path, 0, "distributed=single", "logger.wandb.mode=online", "trainer.max_steps=2")
    assert "logging offline instead" in out
    run_id = (tmp_path / "wandb" / "run_id").read_text().strip()
    (path,) = run_files(tmp_path / "wandb", run_id)
    assert wait_until_finished(path)
    assert [row["_step"] for row in read_run_history(tmp_path / "wandb", run_id) if "loss" in row] == [1, 2]
