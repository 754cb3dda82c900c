import json
import subprocess
import sys
import time

import pytest

from olmo_train.resilience.goodput import analyze
from olmo_train.resilience.ledger import ledger_path
from olmo_train.resilience.plot import loss_segments
from olmo_train.resilience.report_cli import log_to_wandb, main, wandb_run_id, wandb_summary
from tests.resilience.test_goodput import crash_and_preempt_run


@pytest.fixture
def run_dir(tmp_path):
    path = ledger_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in crash_and_preempt_run()))
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in [*range(1, 13), *range(11, 16), *range(16, 21)]:
            f.write(json.dumps({"step": step, "loss": 10.0 / step, "lr": 1e-3}) + "\n")
    return tmp_path


def test_text_report(run_dir, capsys):
    assert main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 attempts, 2 interruptions, 20 steps kept, 2 redone" in out
    assert "a0 -> a1 crashed" in out and "a1 -> a2 preempted" in out and "median parts" in out


def test_json_report_and_plot(run_dir, capsys, tmp_path):
    png = tmp_path / "out" / "goodput.png"
    assert main([str(run_dir), "--json", "--plot", str(png)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["overall"]["steps_lost"] == 2 and len(data["recoveries"]) == 2
    assert [a["outcome"] for a in data["attempts"]] == ["crashed", "preempted", "finished"]
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_loss_segments_split_at_resume(run_dir):
    segments = loss_segments(run_dir / "metrics.jsonl")
    assert [(s[0], s[-1]) for s, _ in segments] == [(1, 12), (11, 20)]


def test_missing_ledger_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no ledger" in capsys.readouterr().err


def test_wandb_on_without_run_id_is_a_clear_error(run_dir, capsys):
    assert main([str(run_dir), "--wandb", "on"]) == 2
    assert "no W&B run id" in capsys.readouterr().err


def test_console_script_dispatches_plan():
    out = subprocess.run([sys.executable, "-m", "olmo_train.resilience.report_cli", "plan", "--gpus", "8",
                          "--failure-rate", "1e-3", "--checkpoint-s", "5", "--recovery-s", "60", "--runs", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "best interval" in out.stdout


class FakeRun:
    def __init__(self):
        self.summary: dict = {}
        self.logged: list = []

    def log(self, data):
        self.logged.append(data)


def test_wandb_figures(run_dir):
    report = analyze(crash_and_preempt_run())
    flat = wandb_summary(report)
    assert flat["goodput/overall/interruptions"] == 2
    assert flat["goodput/cpu/recovery_median_s"] == pytest.approx(13.0)
    assert flat["goodput/overall/recovery_median/requeue_wait_s"] == pytest.approx(7.0)
    run = FakeRun()
    log_to_wandb(run, report)
    assert run.summary == flat and len(run.logged[0]["goodput/recoveries"].data) == 2


def test_wandb_offline_round_trip(run_dir, monkeypatch, capsys):
    """--wandb resumes the run whose id the trainer keeps in RUN/wandb/run_id and writes the summary there."""
    (run_dir / "wandb").mkdir()
    (run_dir / "wandb" / "run_id").write_text("abc123def456\n")
    assert wandb_run_id(run_dir) == "abc123def456"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main([str(run_dir)]) == 0  # auto: the trainer never logged to W&B here, so neither do we
    assert not list((run_dir / "wandb").glob("*-abc123def456"))
    assert main([str(run_dir), "--wandb", "on"]) == 0
    from olmo_train.logging.wandb_reader import read_records, run_files

    (path,) = run_files(run_dir / "wandb", "abc123def456")
    summary: dict = {}
    for _ in range(50):  # wandb-core may still be flushing the file when finish() returns
        for record in read_records(path):
            if record.WhichOneof("record_type") == "summary":
                summary |= {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update}
        if "goodput/overall/interruptions" in summary:
            break
        time.sleep(0.2)
    assert summary["goodput/overall/interruptions"] == 2
    assert summary["goodput/cpu/recovery_median_s"] == pytest.approx(13.0)
    capsys.readouterr()
    assert main([str(run_dir)]) == 0  # auto: a W&B run exists in RUN now, so the report goes there again
    assert "goodput summary logged to W&B run abc123def456 (offline)" in capsys.readouterr().err
