"""The instance space: sources of token files cut into fixed-length instances, a train/validation split, a mix,
and the seeded global order.

Each token file is cut into `num_tokens // seq_len` instances (the remainder of a file is dropped; instances
never span files). A source's instances are numbered across its files in order; its last `validation_fraction`
(the tail) is held out. One pass over the mix takes `count_s` instances of source s: the first `count_s` of a
seeded permutation of its training instances (repeating with a fresh permutation past its end). Global sample g
is position `g % M` of a seeded permutation of the M = sum(count_s) mix instances of pass `g // M`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from olmo_train.data.memmap import TokenFile, max_token_id, open_token_files
from olmo_train.data.mix import Mix, instance_counts
from olmo_train.data.order import derive_key, permute
from olmo_train.errors import DataError


@dataclass(frozen=True, slots=True)
class SourceInstances:
    """One source's files as instances of seq_len tokens; local instance i lies in file `file_of(i)`."""

    name: str
    files: tuple[TokenFile, ...]
    seq_len: int
    starts: np.ndarray  # [n_files + 1] cumulative instance counts
    num_train: int
    num_val: int

    @staticmethod
    def build(name: str, files: list[TokenFile], seq_len: int, validation_fraction: float) -> SourceInstances:
        per_file = np.array([f.num_tokens // seq_len for f in files], dtype=np.int64)
        total = int(per_file.sum())
        if total == 0:
            tokens = sum(f.num_tokens for f in files)
            raise DataError(f"data source {name!r} has {tokens} tokens in {len(files)} file(s), not one instance "
                            f"of seq_len {seq_len}. Fix: lower seq_len or add data.")
        num_val = int(total * validation_fraction)
        return SourceInstances(name, tuple(files), seq_len, np.concatenate([[0], np.cumsum(per_file)]),
                               total - num_val, num_val)

    def read(self, local: int) -> np.ndarray:
        """Tokens of instance `local` plus the token after it (-1 at a file end) -> [seq_len + 1] int64."""
        fi = int(np.searchsorted(self.starts, local, side="right")) - 1
        start = (local - int(self.starts[fi])) * self.seq_len
        out = np.full(self.seq_len + 1, -1, dtype=np.int64)
        chunk = self.files[fi].read(start, self.seq_len + 1)
        out[:chunk.size] = chunk
        return out


class MixedDataset:
    """The sources of a mix with their instance counts; maps global sample indices to tokens."""

    def __init__(self, sources: list[SourceInstances], mix: Mix | None, seq_len: int, eos_token_id: int) -> None:
        self.sources = sources
        self.seq_len = seq_len
        self.eos_token_id = eos_token_id
        sizes = [s.num_train for s in sources]
        self.counts = instance_counts(mix, sizes, seq_len) if mix is not None else sizes
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)  # [n_sources + 1]
        self.num_instances = int(self.offsets[-1])
        if self.num_instances == 0:
            raise DataError("the data holds no training instances: every source went to validation. Fix: lower "
                            "data.validation_fraction or add data.")

    def fingerprint(self) -> str:
        desc = {"seq_len": self.seq_len, "eos": self.eos_token_id, "sources": [
            {"name": s.name, "count": c, "train": s.num_train, "val": s.num_val, "files": [
                [os.path.basename(f.path), f.num_tokens, f.dtype.name, f.tokenizer_hash] for f in s.files]}
            for s, c in zip(self.sources, self.counts)]}
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]

    def locate(self, samples: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Global sample indices [n] -> (source index [n], local training instance [n])."""
        samples = np.asarray(samples, dtype=np.int64)
        passes, pos = np.divmod(samples, self.num_instances)
        mixed = np.empty_like(samples)
        for p in np.unique(passes):
            sel = passes == p
            mixed[sel] = permute(pos[sel], self.num_instances, derive_key(seed, "mix-pass", int(p)))
        src = np.searchsorted(self.offsets, mixed, side="right") - 1
        local = np.empty_like(samples)
        for s in np.unique(src):
            sel = src == s
            size = self.sources[s].num_train
            reps, j = np.divmod(mixed[sel] - self.offsets[s], size)
            out = np.empty_like(j)
            for r in np.unique(reps):
                rsel = reps == r
                out[rsel] = permute(j[rsel], size, derive_key(seed, "source", self.sources[s].name, int(r)))
            local[sel] = out
        return src, local

    def read_train(self, samples: np.ndarray, seed: int) -> np.ndarray:
        """Tokens of global samples [n] -> [n, seq_len + 1] int64 (-1 where a file ends)."""
        src, local = self.locate(samples, seed)
        return np.stack([self.sources[s].read(int(i)) for s, i in zip(src, local)]) if len(src) else \
            np.empty((0, self.seq_len + 1), dtype=np.int64)

    def max_token_id(self, cache_dir: str | None, *, scan: bool = True) -> tuple[int, str]:
        """(largest token id, the file holding it) over every file; scan=False skips files without metadata."""
        known = [(max_token_id(f, cache_dir), f.path) for s in self.sources for f in s.files
                 if scan or f.max_token_id is not None]
        return max(known) if known else (-1, "")

    @property
    def has_unscanned_files(self) -> bool:
        return any(f.max_token_id is None for s in self.sources for f in s.files)

    def file_of(self, sample: int, seed: int) -> str:
        """The token file global sample `sample` is read from."""
        src, local = self.locate(np.array([sample]), seed)
        source = self.sources[int(src[0])]
        return source.files[int(np.searchsorted(source.starts, int(local[0]), side="right")) - 1].path


def check_consistent(files: list[TokenFile], where: str) -> None:
    """One dtype and one tokenizer across the files of a mix."""
    dtypes = {f.dtype.name: f.path for f in files}
    if len(dtypes) > 1:
        raise DataError(f"{where} mixes token dtypes {sorted(dtypes)} (e.g. {sorted(dtypes.values())}): the files "
                        f"come from different tokenizers. Fix: re-tokenize every source with one tokenizer.")
    hashes = {f.tokenizer_hash: f.path for f in files if f.tokenizer_hash}
    if len(hashes) > 1:
        raise DataError(f"{where} mixes tokenizers {sorted(hashes)} (files {sorted(hashes.values())}). Fix: "
                        f"re-tokenize every source with one tokenizer.")


def resolve_eos(files: list[TokenFile], configured: int | None, tokenizer_eos: int | None) -> int:
    """The EOS id: from metadata (must agree), else configured, else the tokenizer's."""
    from_meta = {f.eos_token_id for f in files if f.eos_token_id is not None}
    if len(from_meta) > 1:
        raise DataError(f"token files disagree on the EOS id: {sorted(from_meta)}. Fix: re-tokenize with one "
                        f"tokenizer.")
    if from_meta:
        eos = from_meta.pop()
        if configured is not None and configured != eos:
            raise DataError(f"data.eos_token_id={configured} but the token files' metadata says {eos}. Fix: "
                            f"unset data.eos_token_id.")
        return eos
    if configured is not None:
        return configured
    if tokenizer_eos is not None:
        return tokenizer_eos
    raise DataError(f"token files such as {files[0].path} carry no metadata, so their EOS id is unknown. Fix: set "
                    f"data.eos_token_id (dolma2: 100257) or data.tokenizer.")


def open_sources(mix: Mix, *, dtype: str) -> list[tuple[str, list[TokenFile]]]:
    return [(s.name, open_token_files(list(s.paths), dtype=dtype, base_dir=mix.base_dir)) for s in mix.sources]
