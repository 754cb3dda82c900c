"""The hardware a segment of a run trains on: the `cluster=cpu|h100|b200` config group.

One schema for the trainer (device, micro-batch, MFU peak, NCCL settings) and for the Slurm launcher (nodes,
processes per node, time limit, sbatch arguments). Kept free of heavy imports: the batch script reads it at every
attempt's start, which is recovery time.
"""

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from olmo_train.errors import ConfigError


@dataclass(kw_only=True, slots=True)
class ClusterConfig:
    """The hardware a segment of the run trains on (`cluster=cpu|h100|b200`)."""

    name: str = "cpu"
    """Hardware label in the goodput ledger and W&B (one segment per label)."""
    device: str = "cpu"
    """cpu | cuda."""
    gpus_per_node: int = 0
    """Accelerators per node (0 on CPU); the Slurm script launches this many tasks per node."""
    micro_batch_size: int = 2
    """Sequences per rank per forward/backward, unless trainer.micro_batch_size overrides it."""
    peak_flops: float = 1e11
    """Peak dense bf16 FLOP/s of one device, the MFU denominator (H100 SXM 989e12, B200 2.25e15). The CPU
    value is a nominal 1e11 so that MFU stays a comparable number, not a hardware fact."""
    nccl_env: dict[str, str] = field(default_factory=dict)
    """Environment variables set before the process group starts (NCCL_*, TORCH_NCCL_*); unused on CPU."""
    nodes: int = 1
    """Nodes per job when `slurm/pretrain.sh` submits itself (sbatch --nodes)."""
    procs_per_node: int = 0
    """Training processes per node (torchrun --nproc-per-node); 0 = gpus_per_node, or 1 on a CPU cluster."""
    time_limit: str | None = None
    """sbatch --time of each attempt (e.g. "48:00:00"); None = the partition's default."""
    sbatch: list[str] = field(default_factory=list)
    """Extra sbatch arguments (partition, account, --exclusive)."""

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"cluster.device={self.device!r}; valid: cpu, cuda")
        if self.micro_batch_size < 1 or self.peak_flops <= 0 or self.gpus_per_node < 0:
            raise ConfigError(f"cluster {self.name!r}: micro_batch_size={self.micro_batch_size} must be >= 1, "
                              f"peak_flops={self.peak_flops} > 0, gpus_per_node={self.gpus_per_node} >= 0")
        if self.nodes < 1 or self.procs_per_node < 0:
            raise ConfigError(f"cluster {self.name!r}: nodes={self.nodes} must be >= 1 and "
                              f"procs_per_node={self.procs_per_node} >= 0 (0 = one per GPU)")

    @property
    def ranks_per_node(self) -> int:
        """Processes per node after resolving procs_per_node=0."""
        return self.procs_per_node or self.gpus_per_node or 1


def load_cluster(name: str, config_dir: str | Path = "configs") -> ClusterConfig:
    """`configs/cluster/<name>.yaml` as a validated ClusterConfig (unknown keys are an error)."""
    path = Path(config_dir) / "cluster" / f"{name}.yaml"
    if not path.exists():
        options = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"cluster={name}: no {path}; choose one of {options} or add the file")
    try:  # the same typed merge Hydra does, so both readers accept exactly the same files
        merged = OmegaConf.merge(OmegaConf.structured(ClusterConfig(name=name)), OmegaConf.load(path))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {exc}; valid keys: {sorted(ClusterConfig.__dataclass_fields__)}") from exc
