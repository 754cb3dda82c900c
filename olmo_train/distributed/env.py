"""Process groups from torchrun's or Slurm's environment.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. `srun` without torchrun sets only
SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / SLURM_NODELIST: then the rendezvous address is the first node of
the allocation and the port is derived from the job id, so every task agrees on both without talking.
"""

import datetime
import logging
import os
import re
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from olmo_train.errors import EnvironmentSetupError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class DistEnv:
    """Where this process sits: global rank, world size, rank on its node, processes per node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    launcher: str = "none"  # "torchrun" | "slurm" | "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int_env(env: dict[str, str], name: str) -> int:
    value = env[name]
    try:
        return int(value)
    except ValueError:
        raise EnvironmentSetupError(f"environment variable {name}={value!r} is not an integer") from None


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[003-005,9]' -> 'gpu003', 'a1,b2' -> 'a1'."""
    try:  # scontrol knows every syntax; fall back to parsing the common forms when it is absent
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=10, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m:
        raise EnvironmentSetupError(f"cannot parse SLURM_NODELIST={nodelist!r}; set MASTER_ADDR explicitly")
    prefix, ranges = m.group(1), m.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def read_env(env: dict[str, str] | None = None) -> DistEnv:
    """Reads the launcher's variables; sets MASTER_ADDR / MASTER_PORT from Slurm's when torchrun is absent."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        world = _int_env(env, "WORLD_SIZE")
        return DistEnv(rank=_int_env(env, "RANK"), world_size=world,
                       local_rank=int(env.get("LOCAL_RANK", "0")),
                       local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))), launcher="torchrun")
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        rank, world = _int_env(env, "SLURM_PROCID"), _int_env(env, "SLURM_NTASKS")
        local_world = int(env.get("SLURM_NTASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", "1")).split("(")[0])
        env.setdefault("MASTER_ADDR", first_slurm_host(env.get("SLURM_NODELIST", env.get("SLURM_JOB_NODELIST", ""))))
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=env.get("SLURM_LOCALID", "0"),
                   LOCAL_WORLD_SIZE=str(local_world))
        return DistEnv(rank=rank, world_size=world, local_rank=int(env["LOCAL_RANK"]),
                       local_world_size=local_world, launcher="slurm")
    return DistEnv()


def init_distributed(device_type: str, timeout_s: float, nccl_env: dict[str, str] | None = None, *,
                     always: bool = False) -> DistEnv:
    """Initialises the default process group (NCCL on CUDA, gloo on CPU) when more than one process runs, or
    always (FSDP2 and DeepSpeed need one, also for a single process started without a launcher).
    """
    denv = read_env()
    if always and denv.launcher == "none":
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    for key, value in (nccl_env or {}).items():
        os.environ.setdefault(key, str(value))
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise EnvironmentSetupError("cluster.device='cuda' but torch sees no CUDA device; use cluster=cpu")
        torch.cuda.set_device(denv.local_rank)
    if (denv.world_size > 1 or always) and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        kwargs = {"device_id": torch.device("cuda", denv.local_rank)} if device_type == "cuda" else {}
        dist.init_process_group(backend, rank=denv.rank, world_size=denv.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        log.info("process group %s: rank %d of %d (%s)", backend, denv.rank, denv.world_size, denv.launcher)
    return denv


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
