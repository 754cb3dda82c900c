"""The default corpus (a 1 M-character subset here; the default is 16 M) and its tokenizer."""

import json
import os
import subprocess
import sys

from data_pipelines.stdlib_corpus import build_stdlib_corpus, default_tokenizer, stdlib_documents
from data_pipelines.tokenizer import tokenizer_hash, train_bpe
from olmo_train.data import DataConfig, build_train_loader
from tests.data.conftest import STDLIB_CHARS


def test_corpus_is_real_python_and_deterministic():
    docs = stdlib_documents(STDLIB_CHARS)
    assert STDLIB_CHARS <= sum(map(len, docs)) < STDLIB_CHARS + 2_000_000
    assert docs == stdlib_documents(STDLIB_CHARS)
    assert sum("def " in d or "import " in d for d in docs) > 0.8 * len(docs)


def test_bpe_training_is_deterministic():
    docs = stdlib_documents(300_000)
    assert tokenizer_hash(train_bpe(docs, 1000)) == tokenizer_hash(train_bpe(docs, 1000))


def test_default_tokenizer_and_corpus_are_cached(stdlib_cache):
    tok = default_tokenizer(stdlib_cache, max_chars=STDLIB_CHARS)
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.get_vocab_size() <= 8192
    path = build_stdlib_corpus(stdlib_cache, max_chars=STDLIB_CHARS, progress=False)
    meta = json.load(open(os.path.join(path, "metadata.json")))
    assert meta["dtype"] == "uint16" and meta["eos_token_id"] == 0 and meta["tokenizer_hash"] == tokenizer_hash(tok)
    assert meta["num_tokens"] > 200_000 and meta["max_token_id"] < 8192
    mtime = os.stat(os.path.join(path, "metadata.json")).st_mtime_ns
    assert build_stdlib_corpus(stdlib_cache, max_chars=STDLIB_CHARS, progress=False) == path
    assert os.stat(os.path.join(path, "metadata.json")).st_mtime_ns == mtime  # no rebuild


def test_tokenizer_is_the_same_in_another_process(stdlib_cache, tmp_path):
    code = ("import sys; from data_pipelines.stdlib_corpus import default_tokenizer; "
            "from data_pipelines.tokenizer import tokenizer_hash; "
            f"print(tokenizer_hash(default_tokenizer(sys.argv[1], max_chars={STDLIB_CHARS})))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.stdout.strip() == tokenizer_hash(default_tokenizer(stdlib_cache, max_chars=STDLIB_CHARS))


def test_default_config_trains_on_the_stdlib_corpus(stdlib_cache):
    cfg = DataConfig(cache_dir=stdlib_cache, stdlib_max_chars=STDLIB_CHARS, prefetch=1)
    loader = build_train_loader(cfg, seq_len=128, global_batch_size=4, micro_batch_size=2, rank=0, world_size=1,
                                seed=0, vocab_size=8192)
    (step, batches), = list(loader.iter_from(0, num_steps=1))
    tok = default_tokenizer(stdlib_cache, max_chars=STDLIB_CHARS)
    text = tok.decode(batches[0].input_ids[0].tolist())
    assert step == 0 and len(batches) == 2 and len(text) > 128
    assert loader.vocab_size_needed <= 8192
