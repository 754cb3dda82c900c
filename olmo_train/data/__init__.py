"""Token memmaps -> deterministic, resumable training batches (see docs/interfaces.md, Data).

Names are imported lazily, so that light users (tokenizer worker processes reading olmo_train.data.memmap) do
not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IGNORE_INDEX": "olmo_train.data.batch", "Batch": "olmo_train.data.batch",
    "DataConfig": "olmo_train.data.config",
    "EvalLoader": "olmo_train.data.eval", "EvalResult": "olmo_train.data.eval",
    "build_eval_loader": "olmo_train.data.eval", "evaluate": "olmo_train.data.eval",
    "TrainLoader": "olmo_train.data.loader", "build_train_loader": "olmo_train.data.loader",
}


def default_tokenizer(cache_dir: str, *, vocab_size: int = 8192) -> Any:  # -> tokenizers.Tokenizer
    """The byte-level BPE (vocab 8192, `<|endoftext|>` = eos) trained on the stdlib corpus; cached."""
    from data_pipelines.stdlib_corpus import default_tokenizer as build

    return build(cache_dir, vocab_size=vocab_size)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'olmo_train.data' has no attribute {name!r}")


__all__ = [*_EXPORTS, "default_tokenizer"]
