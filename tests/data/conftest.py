"""Small synthetic token files, and the stdlib corpus built once per session in a temporary cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

EOS = 0


def write_tokens(path: str, tokens: np.ndarray, *, sidecar: bool = True, eos: int = EOS,
                 tokenizer_hash: str | None = "synthetic") -> str:
    """A flat token file (OLMo's raw format), with our sidecar metadata unless sidecar=False."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tokens.tofile(path)
    if sidecar:
        meta = {"dtype": tokens.dtype.name, "num_tokens": int(tokens.size), "max_token_id": int(tokens.max()),
                "eos_token_id": eos, "tokenizer_hash": tokenizer_hash}
        with open(path + ".json", "w") as fh:
            json.dump(meta, fh)
    return path


def synthetic_tokens(num_tokens: int, *, low: int = 1, high: int = 1000, seed: int = 0, dtype: str = "uint16",
                     mean_doc: int = 40) -> np.ndarray:
    """Random ids in [low, high) with EOS (0) ending documents of random length."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(low, high, size=num_tokens).astype(dtype)
    tokens[rng.random(num_tokens) < 1.0 / mean_doc] = EOS
    return tokens


@pytest.fixture
def token_source(tmp_path):
    """Two uint16 files of one source (4,000 and 2,500 tokens)."""
    d = tmp_path / "src"
    write_tokens(str(d / "part-0.npy"), synthetic_tokens(4000, seed=1))
    write_tokens(str(d / "part-1.npy"), synthetic_tokens(2500, seed=2))
    return str(d)


STDLIB_CHARS = 1_000_000


@pytest.fixture(scope="session")
def stdlib_cache(tmp_path_factory):
    """A cache dir holding a 1 M-character stdlib corpus and its BPE-8192 tokenizer (built once)."""
    from data_pipelines.stdlib_corpus import build_stdlib_corpus

    cache = str(tmp_path_factory.mktemp("olmo-cache"))
    build_stdlib_corpus(cache, max_chars=STDLIB_CHARS, progress=False)
    return cache
