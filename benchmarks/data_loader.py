"""Loader throughput per rank on the stdlib corpus (page-cached token files; the loader's own CPU cost).

    .venv/bin/python benchmarks/data_loader.py [--steps 200]

For each layout, one rank of the world builds its micro-batches (read instances, labels, doc_lens) for `--steps`
steps: directly (micro_batches(step)) and through the background prefetch thread (iter_from). Tokens/s per rank.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from olmo_train.data import DataConfig, build_train_loader  # noqa: E402

# (seq_len, global batch in instances, world size, micro-batch size)
LAYOUTS = [(2048, 64, 8, 4), (8192, 512, 64, 2), (8192, 512, 512, 1), (512, 256, 1, 32)]


def _rate(fn, steps: int, tokens_per_step: int) -> float:
    t0 = time.perf_counter()
    fn(steps)
    return steps * tokens_per_step / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--cache-dir", default=os.environ.get("OLMO_TRAIN_CACHE") or tempfile.mkdtemp())
    args = p.parse_args()
    for seq_len, gbs, world, mb in LAYOUTS:
        cfg = DataConfig(cache_dir=args.cache_dir, prefetch=4)
        loader = build_train_loader(cfg, seq_len=seq_len, global_batch_size=gbs, micro_batch_size=mb,
                                    rank=world // 2, world_size=world, seed=0)
        per_rank = gbs // world * seq_len

        def direct(steps: int) -> None:
            for s in range(steps):
                loader.micro_batches(s)

        def prefetched(steps: int) -> None:
            for _ in loader.iter_from(0, num_steps=steps):
                pass

        direct(5)  # warm the page cache
        d, pf = _rate(direct, args.steps, per_rank), _rate(prefetched, args.steps, per_rank)
        print(f"seq {seq_len:5d}, global batch {gbs:3d}, world {world:3d}, micro-batch {mb:2d} "
              f"({per_rank:,} tokens/rank/step): direct {d / 1e6:6.1f} M tokens/s/rank, "
              f"prefetch thread {pf / 1e6:6.1f} M tokens/s/rank")


if __name__ == "__main__":
    main()
