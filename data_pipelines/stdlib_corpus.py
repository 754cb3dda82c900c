"""The default corpus: the Python standard library sources of the running interpreter, real text on every machine.

A deterministic subset: all `.py` files under `sysconfig`'s stdlib directory (no site-packages), sorted, shuffled
with a fixed seed, read as UTF-8 (undecodable files skipped) and taken in that order until `max_chars` characters.
The shuffle makes the held-out tail of the token stream (the validation split) a random sample of modules.
Built on first use and cached under `cache_dir/stdlib/`, keyed by interpreter version, subset size and tokenizer
hash; a file lock makes concurrent ranks build it once.
"""

from __future__ import annotations

import fcntl
import os
import platform
import random
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tokenizers import Tokenizer

from data_pipelines.tokenize import tokenize_to_shards
from data_pipelines.tokenizer import load_tokenizer, tokenizer_hash, train_bpe
from olmo_train.data.memmap import METADATA_NAME

DEFAULT_MAX_CHARS = 16_000_000
DEFAULT_VOCAB_SIZE = 8192
EOS = "<|endoftext|>"
_SHUFFLE_SEED = 20260101
_DOCS_PER_SHARD = 128


def _interpreter_key(max_chars: int) -> str:
    return f"{platform.python_implementation().lower()}-{platform.python_version()}-c{max_chars}"


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    files = [p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts)]
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    random.Random(_SHUFFLE_SEED).shuffle(files)
    return files


def stdlib_documents(max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """The deterministic subset: one document per source file, up to `max_chars` characters in all."""
    docs, total = [], 0
    for path in stdlib_files():
        if total >= max_chars:
            break
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            docs.append(text)
            total += len(text)
    return docs


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _stdlib_dir(cache_dir: str | os.PathLike, max_chars: int) -> Path:
    return Path(os.path.expanduser(cache_dir)) / "stdlib" / _interpreter_key(max_chars)


def default_tokenizer(cache_dir: str | os.PathLike, *, vocab_size: int = DEFAULT_VOCAB_SIZE,
                      max_chars: int = DEFAULT_MAX_CHARS) -> Tokenizer:
    """The byte-level BPE (`<|endoftext|>` = eos = id 0) trained on the stdlib corpus; built once and cached."""
    directory = _stdlib_dir(cache_dir, max_chars) / f"bpe-{vocab_size}"
    path = directory / "tokenizer.json"
    with _locked(directory):
        if not path.is_file():
            tok = train_bpe(stdlib_documents(max_chars), vocab_size, eos=EOS)
            tmp = path.with_suffix(f".tmp.{os.getpid()}")
            tok.save(str(tmp))
            os.replace(tmp, path)
    return load_tokenizer(str(path))


def default_tokenizer_path(cache_dir: str | os.PathLike, *, vocab_size: int = DEFAULT_VOCAB_SIZE,
                           max_chars: int = DEFAULT_MAX_CHARS) -> str:
    default_tokenizer(cache_dir, vocab_size=vocab_size, max_chars=max_chars)
    return str(_stdlib_dir(cache_dir, max_chars) / f"bpe-{vocab_size}" / "tokenizer.json")


def build_stdlib_corpus(cache_dir: str | os.PathLike, *, tokenizer: str | None = None,
                        vocab_size: int = DEFAULT_VOCAB_SIZE, max_chars: int = DEFAULT_MAX_CHARS,
                        num_workers: int = 1, progress: bool = True) -> str:
    """The token directory of the stdlib corpus (built on first use). tokenizer: a spec, None = default BPE."""
    eos = None
    if tokenizer is None:
        tokenizer, eos = default_tokenizer_path(cache_dir, vocab_size=vocab_size, max_chars=max_chars), EOS
    tok = load_tokenizer(tokenizer)
    out_dir = _stdlib_dir(cache_dir, max_chars) / f"tokens-{tokenizer_hash(tok)}"
    with _locked(out_dir):
        if not (out_dir / METADATA_NAME).is_file():
            import datasets  # heavy: imported here so that spawned tokenizer workers start fast

            docs = stdlib_documents(max_chars)
            dataset = datasets.Dataset.from_dict({"text": docs})
            tokenize_to_shards(dataset, str(out_dir), tok, docs_per_shard=_DOCS_PER_SHARD, num_workers=num_workers,
                               source=f"python-stdlib:{_interpreter_key(max_chars)}", eos=eos,
                               tokenizer_spec=tokenizer, progress=progress)
    return str(out_dir)

