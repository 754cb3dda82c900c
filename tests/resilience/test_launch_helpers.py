import pytest
import yaml

from olmo_train.errors import ConfigError
from olmo_train.launch.profile import load_profile
from olmo_train.launch.slurm_job import free_port_from, master_port, max_restarts, resubmit_args, slurm_time


def test_profiles_are_the_trainer_cluster_group(tmp_path):
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "b200.yaml").write_text(yaml.safe_dump({"device": "cuda", "gpus_per_node": 4,
                                                                     "nodes": 128, "peak_flops": 2.25e15}))
    p = load_profile("b200", tmp_path)
    assert (p.nodes, p.gpus_per_node, p.ranks_per_node, p.name) == (128, 4, 4, "b200")
    (tmp_path / "cluster" / "typo.yaml").write_text(yaml.safe_dump({"gpus_per_nod": 8}))
    with pytest.raises(ConfigError, match="gpus_per_nod"):
        load_profile("typo", tmp_path)
    with pytest.raises(ConfigError, match=r"cluster=nope.*b200"):
        load_profile("nope", tmp_path)


def test_repository_profiles_load():
    shapes = {name: (p.nodes, p.ranks_per_node, p.name) for name in ("cpu", "h100", "b200")
              for p in [load_profile(name)]}
    assert shapes == {"cpu": (2, 1, "cpu"), "h100": (64, 8, "h100"), "b200": (64, 8, "b200")}


def test_slurm_time_and_port():
    assert slurm_time("Unknown") is None and slurm_time(None) is None
    assert slurm_time("2026-11-23T13:37:22") % 60 == 22
    assert master_port("12345", None) != master_port("12345", "1")
    assert master_port("2", None, "/tmp/a/slurm.conf") != master_port("2", None, "/tmp/b/slurm.conf")
    assert all(20000 <= master_port(str(j), "3", "x") < 40000 for j in range(0, 100000, 777))


def test_free_port_skips_a_taken_one():
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        port = taken.getsockname()[1]
        taken.listen()
        assert free_port_from(port) != port


def test_max_restarts_sources(tmp_path):
    assert max_restarts(["resilience.max_restarts=7"], tmp_path) == 7
    (tmp_path / "config.yaml").write_text("# header\nresilience:\n  max_restarts: 2\n")
    assert max_restarts(["trainer.max_steps=5"], tmp_path) == 2
    assert max_restarts([], tmp_path / "none") == 5


def test_resubmit_args_recreate_the_job():
    job = {"NumNodes": "2", "JobName": "olmo-train", "Partition": "gpu", "TimeLimit": "2-00:00:00",
           "TresPerNode": "gres:gpu:8", "StdOut": "/logs/x.out", "Account": "(null)"}
    args = resubmit_args(job, ["n3", "n7"], "42")
    assert "--exclude=n3,n7" in args and "--dependency=afterany:42" in args and "--gres=gpu:8" in args
    assert "--time=2-00:00:00" in args and "--partition=gpu" in args and "--output=/logs/x.out" in args
    assert not any(a.startswith("--account") for a in args)
