"""An exact fast path for byte-level BPE tokenizers (GPT-2 style, dolma2 / cl100k style).

Such a tokenizer splits text into pre-tokens with one regex, maps bytes to printable characters and runs BPE on
each pre-token alone. So the ids of a document are the concatenation of the ids of its pre-tokens, and a corpus
repeats few distinct pre-tokens. We split with the same regex (Python's `regex`, fast C), encode each distinct
pre-token once with the tokenizer itself, and assemble a shard's ids with one numpy gather: no Python object per
token. Documents the fast path might treat differently (holding an added token's text, or characters the regex
does not cover) go through the tokenizer as a whole. tests/data/test_fast_bpe.py checks equality on real text.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer, pre_tokenizers

try:
    import regex
except ImportError:  # transformers depends on it; without it every tokenizer takes the plain path
    regex = None

# The split regex of tokenizers' ByteLevel pre-tokenizer with use_regex=True.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_MAX_CACHED_WORDS = 2_000_000  # the cache is dropped beyond this many distinct pre-tokens (bounded memory)


def _is_plain_byte_level(p: dict | None) -> bool:
    return bool(p) and p.get("type") == "ByteLevel" and not p.get("add_prefix_space", False)


def split_pattern(tok: Tokenizer) -> str | None:
    """The pre-token regex of a byte-level BPE tokenizer the fast path reproduces exactly, else None."""
    cfg = json.loads(tok.to_str())
    model = cfg.get("model") or {}
    if cfg.get("normalizer") is not None or model.get("type") != "BPE" or model.get("dropout"):
        return None
    pre = cfg.get("pre_tokenizer") or {}
    if _is_plain_byte_level(pre) and pre.get("use_regex", True):
        return GPT2_PATTERN
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(steps) != 2 or steps[0].get("type") != "Split" or not _is_plain_byte_level(steps[1]) \
            or steps[1].get("use_regex", True) or "Regex" not in (steps[0].get("pattern") or {}):
        return None
    # keeps the matches: "Isolated" (gaps kept too: our coverage check sends such documents the slow way) or
    # "Removed" + invert (gaps dropped), which tiktoken conversions such as dolma2 / cl100k use
    keeps_matches = (steps[0].get("behavior"), bool(steps[0].get("invert"))) in {("Isolated", False),
                                                                                  ("Removed", True)}
    return steps[0]["pattern"]["Regex"] if keeps_matches else None


class FastByteLevelEncoder:
    """encode(texts, eos_id) -> (tokens [N] with EOS after each non-empty document, num_docs)."""

    def __init__(self, tok: Tokenizer, pattern: str) -> None:
        self._tok = tok
        self._split = regex.compile(pattern).findall
        self._word_tok = Tokenizer.from_str(tok.to_str())
        self._word_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        self._added = [t.content for t in tok.get_added_tokens_decoder().values()]
        self._reset()

    def _reset(self) -> None:
        self._index: dict[str, int] = {}
        self._starts = np.zeros(0, dtype=np.int64)  # [n_entries] offset of each entry's ids in _flat
        self._lens = np.zeros(0, dtype=np.int64)  # [n_entries]
        self._flat = np.zeros(0, dtype=np.int64)  # [sum(lens)]

    def _append(self, ids_lists: list[list[int]]) -> int:
        """Adds table entries; returns the index of the first."""
        first = len(self._lens)
        lens = np.fromiter(map(len, ids_lists), dtype=np.int64, count=len(ids_lists))
        self._starts = np.concatenate([self._starts, self._flat.size + np.cumsum(lens) - lens])
        self._lens = np.concatenate([self._lens, lens])
        self._flat = np.concatenate([self._flat, np.fromiter(itertools.chain.from_iterable(ids_lists),
                                                             dtype=np.int64, count=int(lens.sum()))])
        return first

    def _words(self, text: str) -> list[str] | None:
        """Pre-tokens of `text`, or None when the whole-document path must take it."""
        if any(a in text for a in self._added):
            return None
        words = self._split(text)
        return words if sum(map(len, words)) == len(text) else None

    def encode(self, texts: list[str], eos_id: int) -> tuple[np.ndarray, int]:
        if len(self._index) > _MAX_CACHED_WORDS:
            self._reset()
        eos_entry = self._append([[eos_id]])
        per_doc = [self._words(t) for t in texts]
        new = list({w for ws in per_doc if ws for w in ws if w not in self._index})
        if new:
            first = self._append([e.ids for e in self._word_tok.encode_batch_fast(new, add_special_tokens=False)])
            self._index.update(zip(new, range(first, first + len(new))))
        slow = [t for t, ws in zip(texts, per_doc) if ws is None and t]
        slow_entry = self._append([e.ids for e in self._tok.encode_batch_fast(slow, add_special_tokens=False)]) \
            if slow else 0
        entries, num_docs = self._entries(per_doc, texts, eos_entry, slow_entry)
        return self._gather(entries), num_docs

    def _entries(self, per_doc: list[list[str] | None], texts: list[str], eos_entry: int,
                 slow_entry: int) -> tuple[np.ndarray, int]:
        """Table entries of the shard in order, EOS after each document -> ([n_entries], num_docs)."""
        get = self._index.__getitem__
        chunks: list[Iterable[int]] = []
        num_docs = 0
        for ws, text in zip(per_doc, texts):
            if ws is None:
                if not text:
                    continue
                chunks.append((slow_entry, eos_entry))
                slow_entry += 1
            elif ws:
                chunks.append(itertools.chain(map(get, ws), (eos_entry,)))
            else:
                continue
            num_docs += 1
        return np.fromiter(itertools.chain.from_iterable(chunks), dtype=np.int64), num_docs

    def _gather(self, entries: np.ndarray) -> np.ndarray:
        lens, starts = self._lens[entries], self._starts[entries]  # [n_entries]
        ends = np.cumsum(lens)
        positions = np.arange(int(ends[-1]) if ends.size else 0) + np.repeat(starts - (ends - lens), lens)
        return self._flat[positions]


def make_encoder(tok: Tokenizer) -> FastByteLevelEncoder | None:
    """The fast encoder when `tok` is a byte-level BPE it reproduces exactly (and `regex` is installed)."""
    pattern = split_pattern(tok) if regex is not None else None
    return FastByteLevelEncoder(tok, pattern) if pattern is not None else None
