"""Cluster profiles as the Slurm script and the launchers see them: nodes, processes per node, hardware name.

Read from the trainer's Hydra group `configs/cluster/<name>.yaml` (keys `hardware`, `nodes`, `gpus_per_node`,
`procs_per_node`, `time_limit`, `sbatch`), each key falling back to the built-in default of that profile name.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from olmo_train.errors import ConfigError


@dataclass(kw_only=True, slots=True, frozen=True)
class ClusterProfile:
    name: str
    hardware: str
    """Ledger's hardware segment name (h100, b200, cpu)."""
    nodes: int = 1
    """Nodes per job (sbatch --nodes) when pretrain.sh submits itself."""
    gpus_per_node: int = 0
    """GPUs per node (sbatch --gres=gpu:N); 0 on CPU clusters."""
    procs_per_node: int = 1
    """Training processes per node (torchrun --nproc-per-node): the GPU count, or CPU ranks on CPU clusters."""
    time_limit: str | None = None
    """sbatch --time (e.g. "48:00:00"); None = the partition's default."""
    sbatch: tuple[str, ...] = field(default_factory=tuple)
    """Extra sbatch arguments (partition, account, --exclusive)."""

    def __post_init__(self) -> None:
        for name in ("nodes", "procs_per_node"):
            if getattr(self, name) < 1:
                raise ConfigError(f"cluster profile {self.name}: {name}={getattr(self, name)} must be >= 1")
        if self.gpus_per_node < 0:
            raise ConfigError(f"cluster profile {self.name}: gpus_per_node={self.gpus_per_node} must be >= 0")


BUILTIN = {
    "cpu": ClusterProfile(name="cpu", hardware="cpu", nodes=2, gpus_per_node=0, procs_per_node=1),
    "h100": ClusterProfile(name="h100", hardware="h100", nodes=64, gpus_per_node=8, procs_per_node=8,
                           time_limit="48:00:00", sbatch=("--exclusive",)),
    "b200": ClusterProfile(name="b200", hardware="b200", nodes=64, gpus_per_node=8, procs_per_node=8,
                           time_limit="48:00:00", sbatch=("--exclusive",)),
}


def load_profile(name: str, config_dir: str | Path = "configs") -> ClusterProfile:
    path = Path(config_dir) / "cluster" / f"{name}.yaml"
    base = BUILTIN.get(name)
    data = {}
    if path.exists():
        data = yaml.safe_load(path.read_text()) or {}
    elif base is None:
        raise ConfigError(f"cluster={name}: no {path} and no built-in profile; choose one of {sorted(BUILTIN)} "
                          "or add the file")
    if base is None:
        base = ClusterProfile(name=name, hardware=str(data.get("hardware", name)))
    known = {k: data[k] for k in ("hardware", "nodes", "gpus_per_node", "procs_per_node", "time_limit")
             if data.get(k) is not None}
    if data.get("sbatch"):
        known["sbatch"] = tuple(str(a) for a in data["sbatch"])
    if "gpus_per_node" in known and "procs_per_node" not in known and known["gpus_per_node"] > 0:
        known["procs_per_node"] = known["gpus_per_node"]
    return replace(base, **known)
