import json
import os
import subprocess
import sys
import time


from olmo_train.resilience import health


def test_gpu_check_counts_memory_and_processes():
    idle = lambda: ([["0", "3"], ["1", "5"]], [])  # noqa: E731
    assert health.check_gpus(2, query=idle).ok
    assert not health.check_gpus(4, query=idle).ok
    busy = lambda: ([["0", "3"], ["1", "40000"]], ["1234, python"])  # noqa: E731
    result = health.check_gpus(2, query=busy)
    assert not result.ok and "GPU 1 has 40000 MiB" in result.detail and "1234, python" in result.detail
    assert not health.check_gpus(1, query=lambda: None).ok  # no nvidia-smi but GPUs expected
    assert health.check_gpus(0).ok


def test_disk_check(tmp_path):
    assert health.check_disk(str(tmp_path / "run" / "not-yet"), 0.001).ok
    result = health.check_disk(str(tmp_path), 1e9)
    assert not result.ok and "need" in result.detail


def test_memory_check():
    assert health.check_memory(0.001).ok
    assert not health.check_memory(1e9).ok


def test_stray_process_of_this_run_is_found_and_waited_for(tmp_path):
    run_dir = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", f"run.dir={run_dir}"])
    try:
        time.sleep(0.3)
        assert any(str(proc.pid) in s for s in health.stray_processes(run_dir))
        assert health.stray_processes(str(tmp_path / "other-run")) == []
        assert not health.check_strays(run_dir, grace_s=0.2).ok
        subprocess.Popen(["bash", "-c", f"sleep 0.5; kill {proc.pid}"])
        assert health.check_strays(run_dir, grace_s=5).ok  # gone within the grace period
    finally:
        proc.kill()
        proc.wait()


def test_shell_carrying_the_overrides_is_not_a_stray(tmp_path):
    run_dir = str(tmp_path / "run")
    proc = subprocess.Popen(["bash", "-c", "sleep 30", "pretrain.sh", f"run.dir={run_dir}"])
    try:
        time.sleep(0.2)
        assert health.stray_processes(run_dir) == []
    finally:
        proc.kill()
        proc.wait()


def test_cli_json_and_exit_codes(tmp_path, monkeypatch):
    env = {**os.environ, "SLURMD_NODENAME": "n2"}
    args = [sys.executable, "-m", "olmo_train.resilience.health", "--run-dir", str(tmp_path), "--gpus", "0",
            "--min-disk-gib", "0.001", "--min-mem-gib", "0.001", "--stray-grace-s", "0"]
    ok = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["node"] == "n2" and report["ok"]
    assert [c["name"] for c in report["checks"]] == ["gpu", "strays", "disk", "memory"]
    bad = subprocess.run(args, env={**env, "OLMO_HEALTHCHECK_FAIL": "n1,n2"}, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and "forced FAILED" in bad.stderr and not json.loads(bad.stdout)["ok"]
    other = subprocess.run(args, env={**env, "OLMO_HEALTHCHECK_FAIL": "n1"}, capture_output=True, timeout=60)
    assert other.returncode == 0


def test_processes_of_the_ignored_attempt_are_not_strays(tmp_path):
    run_dir = str(tmp_path / "run")
    env = {**os.environ, "SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "2"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", f"run.dir={run_dir}"], env=env)
    try:
        time.sleep(0.3)
        assert health.stray_processes(run_dir, ignore_attempt="77.2") == []
        assert len(health.stray_processes(run_dir, ignore_attempt="77.1")) == 1  # an earlier attempt's leftover
    finally:
        proc.kill()
        proc.wait()
