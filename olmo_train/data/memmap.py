"""Token files on disk: OLMo's flat memmaps of token ids, plus our optional metadata.

Format (what `olmo-tokenize` writes and what OLMo's `part-*.npy` files already are):
- a token file is a flat little-endian array of uint16 or uint32 token ids with no header, EOS between documents;
  a real `.npy` file (with numpy's header) is read too;
- `<file>.json` beside a token file (a "sidecar", written after the file is complete) records its dtype, token and
  document counts, max token id, eos id and tokenizer hash;
- a dataset directory holds token files plus `metadata.json` (written last) listing them.
Files without metadata (OLMo's raw files) take dtype and eos id from `DataConfig`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from olmo_train.errors import DataError

METADATA_NAME = "metadata.json"
SIDECAR_SUFFIX = ".json"
FORMAT_VERSION = "olmo-train-tokens/1"
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
NPY_MAGIC = b"\x93NUMPY"
_SCAN_CHUNK = 1 << 24  # tokens per chunk when scanning a raw file for its max token id


@dataclass(frozen=True, slots=True)
class TokenFile:
    """One flat token file. `header_bytes` > 0 only for real `.npy` files."""

    path: str
    dtype: np.dtype
    num_tokens: int
    header_bytes: int = 0
    max_token_id: int | None = None
    eos_token_id: int | None = None
    tokenizer_hash: str | None = None

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) clipped at the file end; a view into the memmap."""
        return _memmap(self)[start:start + length]


_MEMMAPS: dict[str, np.memmap] = {}
_MEMMAPS_LOCK = threading.Lock()


def _memmap(f: TokenFile) -> np.memmap:
    mm = _MEMMAPS.get(f.path)
    if mm is None:
        with _MEMMAPS_LOCK:
            mm = _MEMMAPS.get(f.path)
            if mm is None:
                mm = np.memmap(f.path, dtype=f.dtype, mode="r", offset=f.header_bytes, shape=(f.num_tokens,))
                _MEMMAPS[f.path] = mm
    return mm


def read_json(path: str | Path) -> dict[str, Any]:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read metadata file {path}: {e}. Fix: delete it and re-run olmo-tokenize.") from e


def parse_dtype(name: str, where: str) -> np.dtype:
    if name not in DTYPES:
        raise DataError(f"{where}: dtype {name!r} is not a token dtype; valid: {sorted(DTYPES)}.")
    return DTYPES[name]


def _npy_header(path: str) -> tuple[np.dtype, int] | None:
    """(dtype, header bytes) of a real .npy file, None for a raw flat file."""
    with open(path, "rb") as fh:
        if fh.read(6) != NPY_MAGIC:
            return None
        fh.seek(0)
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh)
        if len(shape) != 1:
            raise DataError(f"token file {path} is a {len(shape)}-D .npy array; token files must be 1-D.")
        return dtype, fh.tell()


def open_token_file(path: str, *, dtype: str = "auto") -> TokenFile:
    """Validates and describes one token file. dtype: "auto" (sidecar / .npy header, else uint32), or a name."""
    if not os.path.isfile(path):
        raise DataError(f"token file {path} does not exist. Fix: check the path in DataConfig.sources or the mix.")
    size = os.path.getsize(path)
    meta = read_json(path + SIDECAR_SUFFIX) if os.path.isfile(path + SIDECAR_SUFFIX) else {}
    header = 0
    npy = _npy_header(path) if size >= 6 else None
    if npy is not None:
        np_dtype, header = npy
        if np_dtype.str.lstrip("<=") not in ("u2", "u4"):
            raise DataError(f"token file {path} has dtype {np_dtype}; token files must be uint16 or uint32.")
    elif "dtype" in meta:
        np_dtype = parse_dtype(meta["dtype"], f"{path}{SIDECAR_SUFFIX}")
    else:
        np_dtype = DTYPES["uint32"] if dtype == "auto" else parse_dtype(dtype, "DataConfig.dtype")
    body = size - header
    if body <= 0:
        raise DataError(f"token file {path} is empty. Fix: remove it from the sources or re-run olmo-tokenize.")
    if body % np_dtype.itemsize:
        raise DataError(
            f"token file {path} has {body} bytes, not a multiple of its dtype {np_dtype.name} "
            f"({np_dtype.itemsize} bytes): it is truncated or has another dtype. Fix: re-run olmo-tokenize, "
            f"or set DataConfig.dtype to the dtype it was written with.")
    n = body // np_dtype.itemsize
    if "num_tokens" in meta and meta["num_tokens"] != n:
        raise DataError(f"token file {path} holds {n} tokens but its sidecar says {meta['num_tokens']}: "
                        f"the file changed after tokenisation. Fix: re-run olmo-tokenize into a fresh directory.")
    return TokenFile(path=path, dtype=np_dtype, num_tokens=n, header_bytes=header,
                     max_token_id=meta.get("max_token_id"), eos_token_id=meta.get("eos_token_id"),
                     tokenizer_hash=meta.get("tokenizer_hash"))


def _expand(spec: str, base_dir: str | None) -> list[str]:
    """Files named by one source entry: a dataset dir, a dir of token files, a file, or a glob."""
    spec = os.path.expanduser(spec)
    if base_dir is not None and not os.path.isabs(spec):
        spec = os.path.join(base_dir, spec)
    if os.path.isdir(spec):
        meta_path = os.path.join(spec, METADATA_NAME)
        if os.path.isfile(meta_path):
            meta = read_json(meta_path)
            return [os.path.join(spec, s["file"]) for s in meta["shards"]]
        files = sorted(glob.glob(os.path.join(spec, "*.npy")))
        if any(read_json(f + SIDECAR_SUFFIX).get("job") for f in files[:1] if os.path.isfile(f + SIDECAR_SUFFIX)):
            raise DataError(f"directory {spec} holds olmo-tokenize shards but no {METADATA_NAME}: the tokenisation "
                            f"did not finish. Fix: re-run the same olmo-tokenize command (it resumes).")
        if not files:
            raise DataError(f"directory {spec} holds no {METADATA_NAME} and no *.npy token files. "
                            f"Fix: point at the output directory of olmo-tokenize or at token files.")
        return files
    if glob.has_magic(spec):
        files = sorted(p for p in glob.glob(spec) if not p.endswith(SIDECAR_SUFFIX))
        if not files:
            raise DataError(f"glob {spec} matches no files. Fix: check the pattern.")
        return files
    if not os.path.exists(spec):
        raise DataError(f"data path {spec} does not exist. Fix: check DataConfig.sources / the mix file, "
                        f"or tokenize the text first with olmo-tokenize.")
    return [spec]


def open_token_files(specs: list[str], *, dtype: str = "auto", base_dir: str | None = None) -> list[TokenFile]:
    """All token files of a list of path specs, in order, each validated."""
    return [open_token_file(p, dtype=dtype) for spec in specs for p in _expand(spec, base_dir)]


def _scan_cache_path(f: TokenFile, cache_dir: str) -> str:
    st = os.stat(f.path)
    key = f"{os.path.abspath(f.path)}|{st.st_size}|{st.st_mtime_ns}|{f.dtype.name}"
    return os.path.join(cache_dir, "token-stats", hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")


def max_token_id(f: TokenFile, cache_dir: str | None = None) -> int:
    """Largest token id in a file: from its metadata, else scanned once and cached under cache_dir."""
    if f.max_token_id is not None:
        return int(f.max_token_id)
    cache = _scan_cache_path(f, cache_dir) if cache_dir else None
    if cache and os.path.isfile(cache):
        return int(read_json(cache)["max_token_id"])
    mm = _memmap(f)
    value = max(int(mm[i:i + _SCAN_CHUNK].max()) for i in range(0, f.num_tokens, _SCAN_CHUNK))
    if cache:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        tmp = f"{cache}.tmp.{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump({"path": f.path, "max_token_id": value}, fh)
        os.replace(tmp, cache)
    return value
