"""Tokenizers: load any HF `tokenizer.json` (or a hub name when the hub is reachable), or train a byte-level BPE."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from olmo_train.errors import DataError

EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")


def load_tokenizer(spec: str) -> Tokenizer:
    """A `tokenizer.json` file, a directory holding one, or a hub name (e.g. `allenai/dolma2-tokenizer`)."""
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if os.path.isfile(path):
        try:
            return Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception on malformed json
            raise DataError(f"tokenizer file {path} cannot be loaded: {e}. Fix: pass a HF tokenizer.json.") from e
    if spec.endswith(".json") or spec.startswith((".", "/", "~")) or os.path.exists(os.path.dirname(path) or "\0"):
        raise DataError(f"tokenizer {spec} does not exist. Fix: pass the path of a tokenizer.json, a directory "
                        f"holding one, or a hub name.")
    try:
        return Tokenizer.from_pretrained(spec)
    except Exception as e:
        raise DataError(
            f"tokenizer {spec!r} is neither a local file nor loadable from the HF hub ({e}). Fix: download its "
            f"tokenizer.json and pass the path (the hub is unreachable when HF_HUB_OFFLINE=1).") from e


def train_bpe(texts: Iterable[str], vocab_size: int, *, eos: str = "<|endoftext|>",
              min_frequency: int = 2, length: int | None = None) -> Tokenizer:
    """A byte-level BPE trained on `texts`; deterministic for the same texts in the same order. `eos` gets id 0."""
    if vocab_size < 257 + 1:
        raise DataError(f"vocab_size {vocab_size} is too small for a byte-level BPE; use at least 258.")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[eos],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer, length=length)
    return tok


def tokenizer_hash(tok: Tokenizer) -> str:
    """A short content hash of the whole tokenizer (vocab, merges, pre-tokenizer, special tokens)."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def eos_token_id(tok: Tokenizer, eos: str | None = None) -> int:
    """The id of `eos`, or of the first known end-of-text token the tokenizer has."""
    names = (eos,) if eos else EOS_CANDIDATES
    for name in names:
        idx = tok.token_to_id(name)
        if idx is not None:
            return idx
    raise DataError(f"tokenizer has none of the end-of-text tokens {list(names)}. Fix: name its EOS token "
                    f"explicitly (olmo-tokenize --eos TOKEN).")


def vocab_size(tok: Tokenizer) -> int:
    return tok.get_vocab_size(with_added_tokens=True)
