"""Encoding one shard of documents and writing it atomically; light imports (no datasets / torch), so that spawned
tokenizer workers start fast."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from data_pipelines.fast_bpe import make_encoder

SIDECAR_SUFFIX = ".json"  # olmo_train.data.memmap reads what this writes


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """Documents [doc_start, doc_end) of the dataset go to `file`."""

    index: int
    doc_start: int
    doc_end: int
    file: str


def write_atomic(path: str, data: bytes | np.ndarray) -> None:
    """Write to a temp name, fsync, rename; the final name never shows a partial file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as fh:
        if isinstance(data, np.ndarray):
            data.tofile(fh)
        else:
            fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def encode_documents(tok: Tokenizer, texts: list[str], eos_id: int, dtype: np.dtype) -> tuple[np.ndarray, int]:
    """Token ids of the documents with EOS after each (empty documents skipped) -> (tokens [N], num_docs)."""
    ids_per_doc = [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
    ids_per_doc = [ids for ids in ids_per_doc if ids]
    out = np.empty(sum(map(len, ids_per_doc)) + len(ids_per_doc), dtype=dtype)
    pos = 0
    for ids in ids_per_doc:
        out[pos:pos + len(ids)] = ids
        pos += len(ids)
        out[pos] = eos_id
        pos += 1
    return out, len(ids_per_doc)


class ShardEncoder:
    """The tokenizer plus, for byte-level BPEs, the exact fast path (data_pipelines/fast_bpe.py)."""

    def __init__(self, tok: Tokenizer, fast: bool = True) -> None:
        self.tok = tok
        self.fast = make_encoder(tok) if fast else None

    def encode(self, texts: list[str], eos_id: int, dtype: np.dtype) -> tuple[np.ndarray, int]:
        if self.fast is None:
            return encode_documents(self.tok, texts, eos_id, dtype)
        tokens, num_docs = self.fast.encode(texts, eos_id)
        return tokens.astype(dtype), num_docs


def encode_shard(encoder: ShardEncoder, out_dir: str, shard: ShardPlan, texts: list[str], job: dict[str, Any],
                 job_hash: str) -> dict[str, Any]:
    tokens, num_docs = encoder.encode(texts, job["eos_token_id"], np.dtype(job["dtype"]))
    path = os.path.join(out_dir, shard.file)
    write_atomic(path, tokens)
    meta = {**asdict(shard), "num_tokens": int(tokens.size), "num_documents": num_docs,
            "max_token_id": int(tokens.max()) if tokens.size else -1, "dtype": job["dtype"],
            "eos_token_id": job["eos_token_id"], "tokenizer_hash": job["tokenizer_hash"], "job": job_hash}
    write_atomic(path + SIDECAR_SUFFIX, json.dumps(meta).encode())
    return meta


_WORKER_ENCODER: ShardEncoder | None = None


def init_worker(tokenizer_json: str, fast: bool) -> None:
    global _WORKER_ENCODER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core; no nested thread pools
    _WORKER_ENCODER = ShardEncoder(Tokenizer.from_str(tokenizer_json), fast)


def worker_encode_shard(*args: Any) -> dict[str, Any]:
    assert _WORKER_ENCODER is not None
    return encode_shard(_WORKER_ENCODER, *args)
