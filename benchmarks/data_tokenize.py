"""Tokenisation throughput on the stdlib corpus: ours (olmo-tokenize's path) vs a plain datasets.map baseline.

    .venv/bin/python benchmarks/data_tokenize.py [--max-chars 16000000] [--workers 2] [--repeats 2]

Measures (tokenizer training excluded; it is timed separately, as is a whole cold build of the default corpus):
- baseline: datasets.map(batched=True, num_proc=W) calling the HF tokenizer, ids kept as Arrow lists;
- ours, W processes: tokenize_to_shards(num_workers=W) -> flat uint16 shards on disk (spawned workers), with the
  exact fast byte-level path (data_pipelines/fast_bpe.py) and without it (fast=False: tokenizers' batch encode);
- ours, 1 process: tokenize_to_shards(num_workers=1), fast path.
Wall-clock tokens/s, and tokens per CPU-second (this process + its children: robust to a shared CPU).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from data_pipelines.stdlib_corpus import build_stdlib_corpus, stdlib_documents  # noqa: E402
from data_pipelines.tokenize import tokenize_to_shards  # noqa: E402
from data_pipelines.tokenizer import train_bpe  # noqa: E402


def _baseline(ds: "datasets.Dataset", tok_json: str, workers: int) -> tuple[int, float]:
    def encode(batch: dict) -> dict:
        from tokenizers import Tokenizer

        tok = _TOK.setdefault(os.getpid(), Tokenizer.from_str(tok_json))
        return {"input_ids": [e.ids for e in tok.encode_batch(batch["text"])]}

    t0 = time.perf_counter()
    out = ds.map(encode, batched=True, num_proc=workers, remove_columns=["text"], load_from_cache_file=False)
    seconds = time.perf_counter() - t0
    return sum(len(x) for x in out["input_ids"]), seconds


_TOK: dict = {}


def _ours(ds: "datasets.Dataset", tok, workers: int, fast: bool) -> tuple[int, float]:
    out = tempfile.mkdtemp()
    try:
        t0 = time.perf_counter()
        meta = tokenize_to_shards(ds, out, tok, docs_per_shard=32, num_workers=workers, progress=False, fast=fast)
        return meta["num_tokens"], time.perf_counter() - t0
    finally:
        shutil.rmtree(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--max-chars", type=int, default=16_000_000)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    import datasets  # here, not at the top: spawned workers re-import this script

    datasets.disable_progress_bars()
    cache = tempfile.mkdtemp()
    t0 = time.perf_counter()
    build_stdlib_corpus(cache, max_chars=args.max_chars, num_workers=args.workers, progress=False)
    print(f"cold build of the default corpus + BPE-8192 tokenizer ({args.max_chars:,} chars, {args.workers} "
          f"workers): {time.perf_counter() - t0:.1f} s")
    shutil.rmtree(cache)
    docs = stdlib_documents(args.max_chars)
    t0 = time.perf_counter()
    tok = train_bpe(docs, 8192)
    print(f"BPE-8192 training on {len(docs)} docs: {time.perf_counter() - t0:.1f} s")
    ds = datasets.Dataset.from_dict({"text": docs})
    runs = {
        f"baseline datasets.map(batched, num_proc={args.workers})": lambda: _baseline(ds, tok.to_str(), args.workers),
        f"ours: {args.workers} processes, fast path": lambda: _ours(ds, tok, args.workers, True),
        f"ours: {args.workers} processes, plain batch encode": lambda: _ours(ds, tok, args.workers, False),
        "ours: 1 process, fast path": lambda: _ours(ds, tok, 1, True),
    }
    results: dict[str, list] = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so that load from other work hits every variant alike
        for name, fn in runs.items():
            cpu0 = _cpu_seconds()
            n, seconds = fn()
            results[name].append((n / seconds, n / (_cpu_seconds() - cpu0)))
    for name, rs in results.items():
        wall, cpu = max(r[0] for r in rs), max(r[1] for r in rs)
        print(f"{name:48s} {wall / 1e6:5.2f} M tokens/s wall, {cpu / 1e6:5.2f} M tokens per CPU-s "
              f"(best of {args.repeats})")


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
