"""Text documents -> token shards in OLMo's flat memmap format (see olmo_train/data/memmap.py).

Restartable: the documents are split into shards by a plan that depends only on the document count and
`docs_per_shard`. Each shard is written to a temp name, fsync'd and renamed, then its sidecar `.json` is written
(the mark of a complete shard); `metadata.json` comes last. A re-run skips every shard whose sidecar matches the
plan and redoes the rest, so an interrupted run resumed gives the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import glob
import hashlib
import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from data_pipelines.shard_writer import (ShardEncoder, ShardPlan, encode_shard, init_worker, worker_encode_shard,
                                         write_atomic)
from data_pipelines.tokenizer import eos_token_id, tokenizer_hash, vocab_size
from olmo_train.data.memmap import FORMAT_VERSION, METADATA_NAME, SIDECAR_SUFFIX, read_json
from olmo_train.errors import DataError

if TYPE_CHECKING:
    import datasets

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".gz": "json", ".parquet": "parquet", ".txt": "text"}


def plan_shards(num_docs: int, docs_per_shard: int) -> list[ShardPlan]:
    if docs_per_shard < 1:
        raise DataError(f"docs_per_shard must be >= 1, got {docs_per_shard}.")
    starts = range(0, num_docs, docs_per_shard)
    return [ShardPlan(i, s, min(s + docs_per_shard, num_docs), f"part-{i:05d}.npy") for i, s in enumerate(starts)]


def load_text_dataset(inputs: list[str], *, text_field: str = "text", split: str = "train",
                      name: str | None = None) -> datasets.Dataset:
    """Local jsonl / json / parquet / text files (all of one kind), or one hub dataset id."""
    import datasets  # heavy: imported here so that spawned tokenizer workers start fast

    looks_local = [p for p in inputs if os.path.exists(p) or glob.has_magic(p) or p.startswith((".", "/", "~"))
                   or os.path.splitext(p)[1] in FILE_BUILDERS]
    local = [p for p in looks_local if os.path.exists(p) or glob.has_magic(p)]
    if looks_local and len(local) != len(inputs):
        missing = sorted(set(inputs) - set(local))
        raise DataError(f"input files {missing} do not exist. Fix: check the paths.")
    if local:
        files = sorted({f for p in local for f in (glob.glob(p) if glob.has_magic(p) else [p])})
        kinds = {FILE_BUILDERS.get(os.path.splitext(f)[1]) for f in files}
        if None in kinds or len(kinds) != 1:
            raise DataError(f"inputs {files} must all be one of .jsonl/.json(.gz)/.parquet/.txt files.")
        for f in files:
            if os.path.getsize(f) == 0:
                raise DataError(f"input file {f} is empty. Fix: remove it from the inputs.")
        ds = datasets.load_dataset(kinds.pop(), data_files=files, split="train")
    else:
        try:
            ds = datasets.load_dataset(inputs[0], name, split=split)
        except Exception as e:
            raise DataError(f"dataset {inputs[0]!r} is no local file and cannot be loaded from the hub ({e}). "
                            f"Fix: check the path, or unset HF_DATASETS_OFFLINE to download.") from e
    if text_field not in ds.column_names:
        raise DataError(f"dataset {inputs} has no column {text_field!r} (columns: {ds.column_names}). "
                        f"Fix: pass --text-field with one of them.")
    if len(ds) == 0:
        raise DataError(f"dataset {inputs} holds no documents.")
    return ds


def _shard_done(out_dir: str, shard: ShardPlan, job_hash: str, overwrite: bool) -> bool:
    path = os.path.join(out_dir, shard.file)
    if not os.path.isfile(path + SIDECAR_SUFFIX):
        return False
    meta = read_json(path + SIDECAR_SUFFIX)
    if meta.get("job") != job_hash:
        if overwrite:
            return False
        raise DataError(f"{path} was written by another tokenisation job (other data, tokenizer or shard size). "
                        f"Fix: use a fresh output directory, or pass overwrite=True (--overwrite).")
    size_ok = os.path.isfile(path) and os.path.getsize(path) == meta["num_tokens"] * np.dtype(meta["dtype"]).itemsize
    return size_ok and (meta["doc_start"], meta["doc_end"]) == (shard.doc_start, shard.doc_end)


def _job(dataset: datasets.Dataset, tok: Tokenizer, *, text_field: str, docs_per_shard: int, source: str,
         eos: str | None) -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "source": source, "dataset_fingerprint": dataset._fingerprint,  # noqa: SLF001
            "num_input_documents": len(dataset), "text_field": text_field, "docs_per_shard": docs_per_shard,
            "tokenizer_hash": tokenizer_hash(tok), "eos_token_id": eos_token_id(tok, eos),
            "dtype": "uint16" if vocab_size(tok) <= 1 << 16 else "uint32"}


def _run_shards(todo: list[ShardPlan], texts_of: Callable[[ShardPlan], list[str]], tok: Tokenizer,
                num_workers: int, fast: bool, args: tuple) -> Iterator[dict[str, Any]]:
    """Encodes and writes the shards, yielding each sidecar as it completes (in-process or in spawned workers)."""
    if num_workers <= 1:
        encoder = ShardEncoder(tok, fast)
        for shard in todo:
            yield encode_shard(encoder, args[0], shard, texts_of(shard), *args[1:])
        return
    ctx = mp.get_context("spawn")  # forking a process that has used tokenizers' thread pool can deadlock
    with ProcessPoolExecutor(num_workers, mp_context=ctx, initializer=init_worker,
                             initargs=(tok.to_str(), fast)) as pool:
        pending: set[Future] = set()
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < 2 * num_workers:  # bounded: never holds the whole dataset's text
                shard = queue.pop(0)
                pending.add(pool.submit(worker_encode_shard, args[0], shard, texts_of(shard), *args[1:]))
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()


def tokenize_to_shards(dataset: datasets.Dataset, out_dir: str, tok: Tokenizer, *, text_field: str = "text",
                       docs_per_shard: int = 10_000, num_workers: int = 1, source: str = "",
                       eos: str | None = None, tokenizer_spec: str = "", overwrite: bool = False,
                       progress: bool = True, fast: bool = True,
                       on_shard_done: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Tokenizes `dataset[text_field]` into `out_dir`; returns the dataset metadata (also in metadata.json).

    num_workers: processes (spawned), each encoding whole shards; 1 = in this process (tokenizers' own thread
    pool then follows TOKENIZERS_PARALLELISM). fast: use the exact fast path for byte-level BPEs
    (data_pipelines/fast_bpe.py; same bytes). on_shard_done(sidecar) is called after each completed shard.
    """
    os.makedirs(out_dir, exist_ok=True)
    job = _job(dataset, tok, text_field=text_field, docs_per_shard=docs_per_shard, source=source, eos=eos)
    identity = {k: v for k, v in job.items() if k != "source"}  # `source` only describes; the data fingerprint counts
    job_hash = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    meta_path = os.path.join(out_dir, METADATA_NAME)
    if os.path.isfile(meta_path) and read_json(meta_path).get("job") == job_hash:
        return read_json(meta_path)
    plan = plan_shards(len(dataset), docs_per_shard)
    _remove_stale(out_dir, {s.file for s in plan} if overwrite else None)
    todo = [s for s in plan if not _shard_done(out_dir, s, job_hash, overwrite)]
    bar = tqdm(total=len(dataset), initial=len(dataset) - sum(s.doc_end - s.doc_start for s in todo),
               unit="doc", desc=f"tokenize {source or out_dir}", disable=not progress)
    tokens, t0 = 0, time.perf_counter()
    for sidecar in _run_shards(todo, lambda s: dataset[s.doc_start:s.doc_end][text_field], tok, num_workers,
                               fast, (out_dir, job, job_hash)):
        tokens += sidecar["num_tokens"]
        bar.update(sidecar["doc_end"] - sidecar["doc_start"])
        bar.set_postfix(tok_per_s=f"{tokens / (time.perf_counter() - t0):.3g}")
        if on_shard_done is not None:
            on_shard_done(sidecar)
    bar.close()
    return _write_metadata(out_dir, plan, job, job_hash, tokenizer_spec)


def _remove_stale(out_dir: str, keep: set[str] | None) -> None:
    """Temp files of an interrupted run; with `keep` (overwrite), also shards of another job outside the plan."""
    for stale in glob.glob(os.path.join(out_dir, "*.tmp.*")):
        os.remove(stale)
    if keep is None:
        return
    for path in glob.glob(os.path.join(out_dir, "part-*.npy*")) + glob.glob(os.path.join(out_dir, METADATA_NAME)):
        if os.path.basename(path).removesuffix(SIDECAR_SUFFIX) not in keep:
            os.remove(path)


def _write_metadata(out_dir: str, plan: list[ShardPlan], job: dict[str, Any], job_hash: str,
                    tokenizer_spec: str) -> dict[str, Any]:
    shards = [read_json(os.path.join(out_dir, s.file + SIDECAR_SUFFIX)) for s in plan]
    shards = [s for s in shards if s["num_tokens"] > 0]
    if not shards:
        raise DataError(f"tokenisation into {out_dir} produced no tokens: every document was empty.")
    for s in shards:
        for key in ("job", "dtype", "eos_token_id", "tokenizer_hash"):
            s.pop(key)
    meta = {**job, "job": job_hash, "tokenizer": tokenizer_spec,
            "num_tokens": sum(s["num_tokens"] for s in shards),
            "num_documents": sum(s["num_documents"] for s in shards),
            "max_token_id": max(s["max_token_id"] for s in shards), "shards": shards}
    write_atomic(os.path.join(out_dir, METADATA_NAME), json.dumps(meta, indent=1).encode())
    return meta
