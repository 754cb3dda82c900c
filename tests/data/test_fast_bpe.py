"""The fast byte-level path gives exactly the tokenizer's own ids."""

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from data_pipelines.fast_bpe import GPT2_PATTERN, make_encoder, split_pattern
from data_pipelines.shard_writer import encode_documents
from data_pipelines.stdlib_corpus import default_tokenizer, stdlib_documents
from tests.data.conftest import STDLIB_CHARS

CL100K_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
TRICKY = ["don't STOP 'S 'll", "x = 12345678 + 3.14e-10\r\n\tend", "数据 données Ñandú ﬁ e\u0301 🙂🙂 \u00a0nbsp",
          "text with <|endoftext|> inside it", "", "   \n\n  trailing spaces   ", "\x00\x01 control", "a" * 3000]


def _check(tok, docs):
    enc = make_encoder(tok)
    assert enc is not None
    eos = tok.token_to_id("<|endoftext|>")
    for chunk in (docs[: len(docs) // 2], docs[len(docs) // 2:], docs):  # the word cache carries across calls
        want, n_want = encode_documents(tok, chunk, eos, np.dtype("uint32"))
        got, n_got = enc.encode(chunk, eos)
        assert n_got == n_want and np.array_equal(got, want)


def test_default_tokenizer_on_the_stdlib_corpus(stdlib_cache):
    tok = default_tokenizer(stdlib_cache, max_chars=STDLIB_CHARS)
    assert split_pattern(tok) == GPT2_PATTERN
    _check(tok, stdlib_documents(STDLIB_CHARS) + TRICKY)


def _trained(pre, normalizer=None):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre, decoders.ByteLevel()
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.train_from_iterator(stdlib_documents(200_000) + TRICKY, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok


@pytest.mark.parametrize("behavior,invert", [("isolated", False), ("removed", True)], ids=["isolated", "dolma2"])
def test_split_then_byte_level_like_dolma2(behavior, invert):
    split = pre_tokenizers.Split(Regex(CL100K_PATTERN), behavior, invert=invert)
    tok = _trained(pre_tokenizers.Sequence([split,
                                            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
    assert split_pattern(tok) == CL100K_PATTERN
    _check(tok, stdlib_documents(200_000) + TRICKY)


@pytest.mark.parametrize("pre,norm", [
    (pre_tokenizers.ByteLevel(add_prefix_space=False), normalizers.NFKC()),
    (pre_tokenizers.ByteLevel(add_prefix_space=True), None),
    (pre_tokenizers.Whitespace(), None),
], ids=["normalizer", "prefix-space", "not-byte-level"])
def test_other_tokenizers_take_the_plain_path(pre, norm):
    assert split_pattern(_trained(pre, norm)) is None
