"""DataConfig: which tokens to train on and how to load them (registered in Hydra's ConfigStore by the trainer)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from olmo_train.errors import ConfigError

DTYPE_CHOICES = ("auto", "uint16", "uint32")


def default_cache_dir() -> str:
    return os.environ.get("OLMO_TRAIN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "olmo-train")


@dataclass(kw_only=True, slots=True)
class DataConfig:
    sources: list[str] = field(default_factory=list)
    """Token data, one source per entry: an `olmo-tokenize` output directory, a directory of `*.npy` token files,
    a token file, or a glob (OLMo's raw `part-*.npy` files work as they are). Sources are concatenated in
    proportion to their sizes. Ignored when `mix` is set. Empty with `mix` None: the stdlib corpus."""

    mix: str | None = None
    """Path of a mix file (yaml) naming sources with weights or token budgets (docs/interfaces.md, Data).
    None = use `sources`."""

    validation_sources: list[str] = field(default_factory=list)
    """Held-out token data for the evaluation loader, same forms as `sources`. Empty = hold out the last
    `validation_fraction` of every training source instead."""

    validation_fraction: float = 0.02
    """Fraction of each source's instances (its tail) held out for validation, in [0, 0.5]. Does nothing when
    `validation_sources` is set. 0 = no validation split."""

    tokenizer: str | None = None
    """Tokenizer (a tokenizer.json path or hub name) used to build the stdlib corpus, and to find the EOS id of raw
    token files without metadata. None = the default byte-level BPE of vocab `stdlib_vocab_size`."""

    eos_token_id: int | None = None
    """EOS id separating documents. None = from the token files' metadata (else from `tokenizer`). Required for raw
    OLMo files without metadata when no tokenizer is given (dolma2: 100257)."""

    dtype: str = "auto"
    """Token dtype of raw files without metadata: "uint16" or "uint32"; "auto" = metadata / .npy header, else
    uint32 (OLMo's dolma2 files). Ignored for files whose metadata names their dtype."""

    cache_dir: str | None = None
    """Where built corpora, tokenizers and token statistics are cached. None = $OLMO_TRAIN_CACHE, else
    ~/.cache/olmo-train."""

    prefetch: int = 2
    """Global steps of micro-batches a background thread prepares ahead of the trainer. 0 = no thread."""

    seed_offset: int = 0
    """Added to the run's seed to seed the data order (change it to reshuffle without changing model init)."""

    document_mask: bool = True
    """Emit `doc_lens` with each batch so the model keeps packed documents apart. False = `doc_lens` None."""

    mask_document_ends: bool = True
    """Ignore (-100) the label at each EOS, whose target is the first token of the next, unrelated document."""

    allow_data_change: bool = False
    """Resume from a checkpoint whose data fingerprint or data seed differs from this run's (the order then does
    not continue the checkpointed one). False = such a resume is a DataError."""

    stdlib_max_chars: int = 16_000_000
    """Size cap of the stdlib corpus in characters (a deterministic subset of the interpreter's stdlib)."""

    stdlib_vocab_size: int = 8192
    """Vocabulary size of the default BPE trained on the stdlib corpus (the `tiny` model preset uses 8192)."""

    num_workers: int = 1
    """Tokenizer processes used when the stdlib corpus is built (1 = in the calling process)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_fraction <= 0.5:
            raise ConfigError(f"data.validation_fraction must be in [0, 0.5], got {self.validation_fraction}.")
        if self.dtype not in DTYPE_CHOICES:
            raise ConfigError(f"data.dtype must be one of {DTYPE_CHOICES}, got {self.dtype!r}.")
        if self.prefetch < 0:
            raise ConfigError(f"data.prefetch must be >= 0 (0 = no background thread), got {self.prefetch}.")
        if self.eos_token_id is not None and self.eos_token_id < 0:
            raise ConfigError(f"data.eos_token_id must be >= 0 or None, got {self.eos_token_id}.")
        if self.stdlib_max_chars < 100_000:
            raise ConfigError(f"data.stdlib_max_chars must be >= 100000, got {self.stdlib_max_chars}.")
        if not 258 <= self.stdlib_vocab_size <= 65536:
            raise ConfigError(f"data.stdlib_vocab_size must be in [258, 65536], got {self.stdlib_vocab_size}.")
        if self.num_workers < 1:
            raise ConfigError(f"data.num_workers must be >= 1, got {self.num_workers}.")
        if isinstance(self.sources, str) or isinstance(self.validation_sources, str):
            raise ConfigError("data.sources and data.validation_sources are lists of paths, not one string: "
                              "write sources=[PATH].")

    def resolved_cache_dir(self) -> str:
        return os.path.expanduser(self.cache_dir) if self.cache_dir else default_cache_dir()
