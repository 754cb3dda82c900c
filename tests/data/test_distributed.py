"""Two gloo processes build the default corpus at once into a fresh cache (a file lock makes one build it) and
read their halves of each step; together they read exactly what one process reads."""

import pytest
import torch
import torch.distributed as dist

from olmo_train.data import DataConfig, build_train_loader
from tests.helpers.distributed import run_distributed

CHARS = 300_000


def _rank_rows(rank: int, world_size: int, cache: str) -> None:
    cfg = DataConfig(cache_dir=cache, stdlib_max_chars=CHARS)
    loader = build_train_loader(cfg, seq_len=64, global_batch_size=8, micro_batch_size=2, rank=rank,
                                world_size=world_size, seed=3)
    rows = torch.cat([b.input_ids for _, bs in loader.iter_from(0, num_steps=3) for b in bs])  # [3 * 4, 64]
    gathered = [torch.empty_like(rows) for _ in range(world_size)]
    dist.all_gather(gathered, rows)
    if rank == 0:
        torch.save(gathered, f"{cache}/rows.pt")


@pytest.mark.distributed
def test_two_ranks_build_once_and_split_every_step(tmp_path):
    run_distributed(_rank_rows, 2, str(tmp_path))
    per_rank = torch.load(tmp_path / "rows.pt")
    single = build_train_loader(DataConfig(cache_dir=str(tmp_path), stdlib_max_chars=CHARS), seq_len=64,
                                global_batch_size=8, micro_batch_size=8, rank=0, world_size=1, seed=3)
    for step in range(3):
        both = torch.cat([r[step * 4:(step + 1) * 4] for r in per_rank])
        assert torch.equal(both, single.micro_batches(step)[0].input_ids)
