"""FSDP2-sharded model + AdamW saved from 2 gloo ranks (asynchronously, while training goes on), loaded at world
size 1 (plain model, no process group) and 4 (FSDP2): every weight and optimizer moment comes back exactly."""

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from olmo_train.checkpoint import CheckpointConfig, CheckpointManager, training_state
from olmo_train.checkpoint.state import flatten_tensors
from tests.checkpoint.conftest import TinyNet
from tests.helpers.distributed import run_distributed

pytestmark = [pytest.mark.distributed, pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def sharded_model(world_size: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = TinyNet(width=8, out=3)  # out=3 rows over 2 or 4 ranks: uneven shards
    mesh = init_device_mesh("cpu", (world_size,))
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    torch.manual_seed(seed + dist.get_rank())
    model(torch.randn(4, 8)).square().mean().backward()
    opt.step()
    opt.zero_grad()


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """{"model.<fqn>", "optim.state.<fqn>.<moment>"} full tensors (a collective)."""
    state = {"model": get_model_state_dict(model, options=FULL),
             "optim": get_optimizer_state_dict(model, opt, options=FULL)}
    return {k: v.detach().clone() for k, v in flatten_tensors(state).items()}  # clone: CPU `step` is live


def _save_at_2(rank: int, world_size: int, run_dir: str) -> None:
    model, opt = sharded_model(world_size)
    for step in range(2):
        train_step(model, opt, step)
    reference = full_state(model, opt)
    mgr = CheckpointManager(CheckpointConfig(async_save=True), run_dir, model_config={"width": 8})
    mgr.save(2, training_state(model, opt, {"tokens": 64}))
    train_step(model, opt, 2)  # training collectives run while the checkpoint thread writes
    mgr.close()
    if rank == 0:
        save_file(reference, str(Path(run_dir) / "reference.safetensors"))


def _load_at_4(rank: int, world_size: int, run_dir: str) -> None:
    model, opt = sharded_model(world_size)
    mgr = CheckpointManager(CheckpointConfig(), run_dir, model_config={"width": 8})
    train = mgr.load(mgr.resume_path(), training_state(model, opt))
    assert train == {"step": 2, "tokens": 64}
    loaded = full_state(model, opt)
    if rank == 0:
        assert_same(load_file(str(Path(run_dir) / "reference.safetensors")), loaded)
    train_step(model, opt, 3)  # the restored optimizer steps fine at the new world size


def assert_same(reference: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]) -> None:
    assert set(reference) == set(loaded)
    assert any(k.endswith("exp_avg_sq") for k in reference)
    for key, tensor in reference.items():
        assert torch.equal(tensor, loaded[key]), key


def test_fsdp2_checkpoint_from_2_ranks_loads_at_1_and_4(tmp_path):
    run_distributed(_save_at_2, 2, str(tmp_path))
    step_dir = tmp_path / "checkpoints" / "step2"
    manifest = json.loads((step_dir / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert {"rng/rank00000.pt", "rng/rank00001.pt"} <= set(manifest["files"])
    assert manifest["tensors"]["model.layers.1.weight"]["shape"] == [3, 8]

    model = TinyNet(width=8, out=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mgr = CheckpointManager(CheckpointConfig(), tmp_path, model_config={"width": 8})
    mgr.load(mgr.resume_path(), training_state(model, opt))
    loaded = {k: v.contiguous() for k, v in flatten_tensors(
        {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}).items()}
    assert_same(load_file(str(tmp_path / "reference.safetensors")), loaded)

    run_distributed(_load_at_4, 4, str(tmp_path))
