import pytest
import torch

from olmo_train.distributed.env import first_slurm_host, read_env
from olmo_train.model import OlmoHybrid, presets
from olmo_train.model.olmo_hybrid.parallelize import apply_activation_checkpointing
from olmo_train.train.losses import lm_loss_sums
from tests.helpers.distributed import run_distributed


def test_torchrun_env():
    d = read_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size, d.launcher) == (3, 8, 1, 2, "torchrun")


def test_slurm_env_without_torchrun():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "8",
           "SLURM_NODELIST": "gpu[003-004]", "SLURM_JOB_ID": "12345"}
    d = read_env(env)
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size, d.launcher) == (5, 16, 1, 8, "slurm")
    assert env["MASTER_ADDR"] == "gpu003" and env["MASTER_PORT"] == str(20000 + 12345)
    assert env["RANK"] == "5" and env["WORLD_SIZE"] == "16"


@pytest.mark.parametrize("nodelist,host", [("gpu[003-005,9]", "gpu003"), ("a1,b2", "a1"), ("node7", "node7")],
                         ids=["range", "list", "single"])
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_single_process_is_no_group():
    assert read_env({}).world_size == 1


def _grads(mode: str) -> dict[str, torch.Tensor]:
    model = OlmoHybrid(presets.tiny().replace(n_layers=4))
    with torch.no_grad():
        model.init_weights(0)
    apply_activation_checkpointing(model, mode)
    ids = torch.randint(0, 8192, (2, 33), generator=torch.Generator().manual_seed(1))
    ce, z = lm_loss_sums(model(ids[:, :-1], doc_lens=torch.tensor([10, 22, 32])), ids[:, 1:])
    (ce + 1e-4 * z).backward()
    assert all("_checkpoint" not in n for n, _ in model.named_parameters())
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_keeps_gradients(mode):
    ref, got = _grads("none"), _grads(mode)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-7, msg=name)


def _hsdp_worker(rank: int, world_size: int) -> None:
    from olmo_train.distributed.backend import BuildSpec, TorchBackend
    from olmo_train.distributed.config import FSDP2Config
    from olmo_train.train.optim import OptimizerConfig

    losses = {}
    for shard in (-1, 1):  # FSDP over both ranks, then HSDP: shard groups of 1, replicated twice
        spec = BuildSpec(model_config=presets.tiny(), optimizer=OptimizerConfig(lr=1e-3), grad_clip=1.0, seed=0,
                         device=torch.device("cpu"), world_size=world_size, micro_batch_size=1, accum_steps=1,
                         seq_len=16)
        backend = TorchBackend(FSDP2Config(hsdp_shard_size=shard), spec)
        g = torch.Generator().manual_seed(rank)
        out = []
        for _ in range(3):
            ids = torch.randint(0, 8192, (1, 17), generator=g)
            ce, z = lm_loss_sums(backend.model(ids[:, :-1]), ids[:, 1:])
            backend.backward(ce / 16)
            backend.finish_step()
            out.append(ce.item())
        losses[shard] = out
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[-1]), rtol=1e-5, atol=0)


@pytest.mark.distributed
def test_hsdp_matches_fsdp():
    run_distributed(_hsdp_worker, 2)
