"""`srun` without torchrun: two plain processes that only know SLURM_PROCID / SLURM_NTASKS form one gloo group."""

import json
import subprocess

import pytest

from tests.helpers.distributed import free_port
from tests.train import launch

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_two_tasks_from_slurm_variables(tmp_path):
    port = free_port()
    procs = []
    for rank in range(2):
        env = launch.env(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank),
                         SLURM_NTASKS_PER_NODE="2", SLURM_NODELIST="localhost", SLURM_JOB_ID="4242",
                         MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            env.pop(key, None)
        cmd = launch.command(tmp_path, 0, ["distributed=fsdp2", "trainer.max_steps=3"])
        procs.append(subprocess.Popen(cmd, cwd=launch.REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    assert sorted(launch.losses(tmp_path)) == [1, 2, 3]
    events = [json.loads(line) for line in (tmp_path / "goodput/events.jsonl").read_text().splitlines()]
    assert {e["world_size"] for e in events} == {2}
    assert "world 2 x micro-batch 2" in outs[0]
