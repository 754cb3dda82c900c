"""Cluster profiles as the Slurm script and the launchers see them.

The schema and the files are the trainer's `cluster` group (`olmo_train.train.cluster`, `configs/cluster/*.yaml`):
one place for nodes, processes per node, GPUs and the sbatch shape.
"""

from pathlib import Path

from olmo_train.train.cluster import ClusterConfig, load_cluster


def load_profile(name: str, config_dir: str | Path = "configs") -> ClusterConfig:
    """The validated profile `configs/cluster/<name>.yaml`; ConfigError names the file and the valid options."""
    return load_cluster(name, config_dir)
