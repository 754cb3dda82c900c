import subprocess
import sys
import textwrap

import pytest

from olmo_train.errors import ConfigError
from olmo_train.resilience.faults import Fault, InjectedFault, maybe_inject_fault, parse_faults


def test_parse():
    assert parse_faults("hang@step7, kill@step5:rank1") == (Fault("hang", 7, 0), Fault("kill", 5, 1))
    assert parse_faults("") == ()


@pytest.mark.parametrize("spec", ["hang", "boom@step3", "hang@7", "hang@step3:r1"])
def test_bad_spec_names_the_variable(spec):
    with pytest.raises(ConfigError, match="OLMO_TRAIN_FAULT"):
        parse_faults(spec)


def test_fires_once_per_run_on_its_rank_and_step(tmp_path, monkeypatch):
    monkeypatch.setenv("OLMO_TRAIN_FAULT", "raise@step3:rank1")
    for step in range(1, 6):
        maybe_inject_fault(step, rank=0, run_dir=tmp_path)  # other rank: nothing
    with pytest.raises(InjectedFault):
        maybe_inject_fault(3, rank=1, run_dir=tmp_path)
    maybe_inject_fault(3, rank=1, run_dir=tmp_path)  # the restarted attempt passes step 3 again
    assert (tmp_path / "goodput" / "faults" / "raise@step3:rank1").exists()


@pytest.mark.parametrize("kind, code", [("kill", -9), ("exit", 1)], ids=["kill", "exit"])
def test_process_faults(tmp_path, kind, code):
    prog = textwrap.dedent(f"""
        import os
        os.environ["OLMO_TRAIN_FAULT"] = "{kind}@step2"
        from olmo_train.resilience.faults import maybe_inject_fault
        for step in range(5):
            maybe_inject_fault(step, rank=0, run_dir={str(tmp_path)!r})
            print("step", step, flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=30)
    assert proc.returncode == code and "step 1" in proc.stdout and "step 2" not in proc.stdout
