import json
import os
import signal
import subprocess
import sys
import time

import datasets
import numpy as np
import pytest

from data_pipelines.tokenize import load_text_dataset, tokenize_to_shards
from data_pipelines.tokenize_cli import main as cli_main
from data_pipelines.tokenizer import eos_token_id, load_tokenizer, tokenizer_hash, train_bpe
from olmo_train.errors import DataError

WORDS = ["def", "return", "self", "import", "numpy", "token", "shard", "the", "of", "loader", "(", ")", ":", "\n",
         "    ", "=", "x", "1", "2", "None", "class", "for", "in", "if", "else", "é", "数据"]


def fake_docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 200)))) for _ in range(n)] + [""]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    train_bpe(fake_docs(200), 400).save(path)
    return path


@pytest.fixture(scope="module")
def dataset():
    return datasets.Dataset.from_dict({"text": fake_docs(120)})


def _shard_bytes(out_dir):
    return {n: open(os.path.join(out_dir, n), "rb").read() for n in sorted(os.listdir(out_dir))
            if n.endswith(".npy")}


def test_shards_round_trip_and_metadata(tmp_path, tok_path, dataset):
    tok = load_tokenizer(tok_path)
    meta = tokenize_to_shards(dataset, str(tmp_path), tok, docs_per_shard=50, progress=False)
    assert meta["num_documents"] == 120 and meta["dtype"] == "uint16" and len(meta["shards"]) == 3
    assert meta["tokenizer_hash"] == tokenizer_hash(tok) and meta["eos_token_id"] == eos_token_id(tok)
    tokens = np.concatenate([np.fromfile(tmp_path / s["file"], dtype=np.uint16) for s in meta["shards"]])
    assert tokens.size == meta["num_tokens"] and tokens[-1] == meta["eos_token_id"]
    docs = np.split(tokens, np.flatnonzero(tokens == meta["eos_token_id"]) + 1)[:-1]
    assert [tok.decode(d[:-1].tolist()) for d in docs] == dataset["text"][:120]  # the empty doc is skipped


def test_interrupted_run_resumed_is_byte_identical(tmp_path, tok_path, dataset):
    tok = load_tokenizer(tok_path)
    tokenize_to_shards(dataset, str(tmp_path / "clean"), tok, docs_per_shard=10, progress=False)

    def crash_after_3(sidecar):
        if sidecar["index"] == 2:
            raise RuntimeError("injected crash")

    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="injected"):
        tokenize_to_shards(dataset, str(out), tok, docs_per_shard=10, progress=False, on_shard_done=crash_after_3)
    assert not (out / "metadata.json").exists()
    assert sorted(p for p in os.listdir(out) if p.endswith(".json")) == [f"part-0000{i}.npy.json" for i in range(3)]
    (out / "part-00003.npy.tmp.999").write_bytes(b"partial")  # what a kill mid-write leaves
    (out / "part-00004.npy").write_bytes(b"\x01\x00")  # a renamed shard whose sidecar never came
    done_before = {p: os.stat(out / p).st_mtime_ns for p in ["part-00000.npy", "part-00001.npy"]}
    redone = []
    tokenize_to_shards(dataset, str(out), tok, docs_per_shard=10, progress=False,
                       on_shard_done=lambda s: redone.append(s["index"]))
    assert redone == list(range(3, 13))  # finished shards are not redone
    assert {p: os.stat(out / p).st_mtime_ns for p in done_before} == done_before
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "clean")
    assert not [p for p in os.listdir(out) if ".tmp." in p]


KILL_SCRIPT = """
import sys, time, datasets
sys.path.insert(0, {root!r})
from tests.data.test_tokenize import fake_docs
from data_pipelines.tokenize import tokenize_to_shards
from data_pipelines.tokenizer import load_tokenizer
ds = datasets.Dataset.from_dict({{"text": fake_docs(120)}})
tokenize_to_shards(ds, {out!r}, load_tokenizer({tok!r}), docs_per_shard=10, progress=False,
                   on_shard_done=lambda s: time.sleep(0.4))
"""


def test_killed_run_resumed_is_byte_identical(tmp_path, tok_path, dataset):
    tokenize_to_shards(dataset, str(tmp_path / "clean"), load_tokenizer(tok_path), docs_per_shard=10,
                       progress=False)
    out = tmp_path / "killed"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = KILL_SCRIPT.format(root=root, out=str(out), tok=tok_path)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    deadline = time.time() + 60
    while time.time() < deadline and len([p for p in os.listdir(out) if p.endswith(".npy.json")]
                                         if out.exists() else []) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete = [p for p in os.listdir(out) if p.endswith(".npy.json")]
    assert 2 <= len(complete) < 12 and not (out / "metadata.json").exists()  # really killed mid-run
    tokenize_to_shards(dataset, str(out), load_tokenizer(tok_path), docs_per_shard=10, progress=False)
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "clean")


def test_worker_processes_write_the_same_bytes(tmp_path, tok_path, dataset):
    tok = load_tokenizer(tok_path)
    tokenize_to_shards(dataset, str(tmp_path / "one"), tok, docs_per_shard=30, progress=False)
    tokenize_to_shards(dataset, str(tmp_path / "two"), tok, docs_per_shard=30, num_workers=2, progress=False)
    assert _shard_bytes(tmp_path / "one") == _shard_bytes(tmp_path / "two")
    meta = [json.load(open(tmp_path / d / "metadata.json")) for d in ("one", "two")]
    assert meta[0]["shards"] == meta[1]["shards"]


def test_another_job_in_the_same_dir_is_an_error(tmp_path, tok_path, dataset):
    tok = load_tokenizer(tok_path)
    tokenize_to_shards(dataset, str(tmp_path), tok, docs_per_shard=20, progress=False)  # 7 shards
    (tmp_path / "metadata.json").unlink()
    with pytest.raises(DataError, match="another tokenisation job.*--overwrite"):
        tokenize_to_shards(dataset, str(tmp_path), tok, docs_per_shard=30, progress=False)
    tokenize_to_shards(dataset, str(tmp_path), tok, docs_per_shard=30, progress=False, overwrite=True)
    assert sorted(p for p in os.listdir(tmp_path) if ".npy" in p) == sorted(
        f"part-{i:05d}.npy{ext}" for i in range(5) for ext in ("", ".json"))  # the old job's 6th, 7th are gone


def test_cli_on_jsonl_and_text_files(tmp_path, capsys):
    docs = fake_docs(40)[:-1]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    cli_main([str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "out"), "--text-field", "body",
              "--train-vocab-size", "300", "--workers", "1", "--no-progress"])
    meta = json.load(open(tmp_path / "out" / "metadata.json"))
    assert meta["num_documents"] == 40 and os.path.isfile(tmp_path / "out" / "tokenizer.json")
    (tmp_path / "b.txt").write_text("one line\nanother line\n")
    cli_main([str(tmp_path / "b.txt"), "--out", str(tmp_path / "txt"), "--tokenizer",
              str(tmp_path / "out" / "tokenizer.json"), "--workers", "1", "--no-progress"])
    assert json.load(open(tmp_path / "txt" / "metadata.json"))["num_documents"] == 2
    datasets.Dataset.from_dict({"text": docs}).to_parquet(str(tmp_path / "c.parquet"))
    cli_main([str(tmp_path / "c.parquet"), "--out", str(tmp_path / "pq"), "--tokenizer",
              str(tmp_path / "out" / "tokenizer.json"), "--workers", "1", "--no-progress"])
    assert json.load(open(tmp_path / "pq" / "metadata.json"))["num_tokens"] == meta["num_tokens"]


@pytest.mark.parametrize("make,match", [
    (lambda p: None, "do not exist"),
    (lambda p: (p / "in.jsonl").write_text(""), "is empty"),
    (lambda p: (p / "in.jsonl").write_text('{"other": "x"}\n'), "has no column 'text'"),
], ids=["missing", "empty", "no-column"])
def test_bad_text_inputs(tmp_path, make, match):
    make(tmp_path)
    with pytest.raises(DataError, match=match):
        load_text_dataset([str(tmp_path / "in.jsonl")])


def test_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main([str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"), "--tokenizer", "x.json"])
    assert exc.value.code == 2 and "do not exist" in capsys.readouterr().err


def test_bad_tokenizers(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(str(tmp_path / "none" / "tokenizer.json"))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="cannot be loaded"):
        load_tokenizer(str(tmp_path / "bad.json"))
    with pytest.raises(DataError, match="HF_HUB_OFFLINE"):
        load_tokenizer("no-such-org/no-such-tokenizer")
