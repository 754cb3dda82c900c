"""Loader throughput per rank: the loader's own cost on page-cached token files.

    .venv/bin/python benchmarks/data_loader.py [--steps 200] [--source stdlib|synthetic] [--device cpu|cuda]

For each layout, one rank of the world builds its micro-batches (read instances, labels, doc_lens) for `--steps`
steps: directly (micro_batches(step)) and through the background prefetch thread (iter_from; pinned memory and
non-blocking copies when the device is CUDA). Tokens/s per rank. `--source synthetic` writes one random uint32
token file (OLMo's raw format) of `--synthetic-tokens` tokens instead of using the stdlib corpus.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from olmo_train.data import DataConfig, build_train_loader  # noqa: E402

# (seq_len, global batch in instances, world size, micro-batch size)
LAYOUTS = [(2048, 64, 8, 4), (8192, 512, 64, 2), (8192, 512, 512, 1), (512, 256, 1, 32)]


def _synthetic(path: str, num_tokens: int) -> str:
    rng = np.random.default_rng(0)
    with open(path, "wb") as fh:
        for start in range(0, num_tokens, 1 << 24):
            chunk = rng.integers(0, 100_000, size=min(1 << 24, num_tokens - start), dtype=np.uint32)
            chunk[rng.random(chunk.size) < 1 / 500] = 100_257  # dolma2's EOS, documents of ~500 tokens
            chunk.tofile(fh)
    return path


def _config(args: argparse.Namespace) -> DataConfig:
    if args.source == "stdlib":
        return DataConfig(cache_dir=args.cache_dir, prefetch=4)
    os.makedirs(args.cache_dir, exist_ok=True)
    path = _synthetic(os.path.join(args.cache_dir, "synthetic-part-0-00000.npy"), args.synthetic_tokens)
    return DataConfig(sources=[path], eos_token_id=100_257, cache_dir=args.cache_dir, prefetch=4)


def _timed(fn, device: torch.device) -> float:
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--source", choices=["stdlib", "synthetic"], default="stdlib")
    p.add_argument("--synthetic-tokens", type=int, default=200_000_000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default=os.environ.get("OLMO_TRAIN_CACHE") or tempfile.mkdtemp())
    args = p.parse_args()
    cfg, device = _config(args), torch.device(args.device)
    print(f"source {args.source}, device {device}, {args.steps} steps per measurement")
    for seq_len, gbs, world, mb in LAYOUTS:
        kwargs = dict(seq_len=seq_len, global_batch_size=gbs, micro_batch_size=mb, rank=world // 2,
                      world_size=world, seed=0)
        loader = build_train_loader(cfg, device=device, **kwargs)
        reference = build_train_loader(cfg, device="cpu", **kwargs)
        for step in range(3):  # the device path delivers exactly the CPU batches
            for got, want in zip(loader.micro_batches(step), reference.micro_batches(step)):
                assert got.input_ids.device.type == device.type
                assert torch.equal(got.input_ids.cpu(), want.input_ids) and torch.equal(got.labels.cpu(), want.labels)
        per_rank = gbs // world * seq_len * args.steps
        direct = _timed(lambda: [loader.micro_batches(s) for s in range(args.steps)], device)
        prefetched = _timed(lambda: [bs for _, bs in loader.iter_from(0, num_steps=args.steps)], device)
        print(f"seq {seq_len:5d}, global batch {gbs:3d}, world {world:3d}, micro-batch {mb:2d} "
              f"({per_rank // args.steps:,} tokens/rank/step): direct {per_rank / direct / 1e6:6.1f} M tokens/s/rank,"
              f" prefetch thread {per_rank / prefetched / 1e6:6.1f} M tokens/s/rank")


if __name__ == "__main__":
    main()
