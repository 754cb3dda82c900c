"""Bad input errors clearly; OLMo's raw files and real .npy files work as they are."""

import os

import numpy as np
import pytest

from olmo_train.data import DataConfig, build_train_loader
from olmo_train.data.memmap import max_token_id, open_token_file
from olmo_train.errors import DataError
from tests.data.conftest import synthetic_tokens, write_tokens


def _build(sources, *, vocab_size=None, **cfg):
    return build_train_loader(DataConfig(sources=sources, validation_fraction=0.0, prefetch=0, **cfg), seq_len=16,
                              global_batch_size=4, micro_batch_size=2, rank=0, world_size=1, seed=0,
                              vocab_size=vocab_size)


def test_olmo_raw_file_without_metadata(tmp_path):
    """An OLMo `part-0-00000.npy` (flat uint32, no header, no sidecar) with the dolma2 EOS."""
    tokens = synthetic_tokens(3000, low=1, high=100_000, dtype="uint32")
    tokens[tokens == 0] = 100257
    path = write_tokens(str(tmp_path / "part-0-00000.npy"), tokens, sidecar=False)
    ld = _build([path], eos_token_id=100257)
    assert ld.eos_token_id == 100257
    row = ld.micro_batches(0)[0].input_ids[0].numpy()
    start = int(ld.dataset.locate(np.array([0]), ld.seed)[1][0]) * 16
    assert np.array_equal(row, tokens[start:start + 16])
    assert ld.vocab_size_needed == int(tokens.max()) + 1
    ld.check_vocab(100352)
    with pytest.raises(DataError, match="EOS id is unknown.*data.eos_token_id"):
        _build([path])


def test_real_npy_file_is_read_through_its_header(tmp_path):
    tokens = synthetic_tokens(1000, dtype="uint16")
    np.save(tmp_path / "t.npy", tokens)
    f = open_token_file(str(tmp_path / "t.npy"))
    assert f.dtype == np.uint16 and f.num_tokens == 1000 and np.array_equal(f.read(10, 5), tokens[10:15])


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="missing.npy does not exist"):
        _build([str(tmp_path / "missing.npy")])


def test_empty_file(tmp_path):
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(DataError, match="empty.npy is empty"):
        _build([str(tmp_path / "empty.npy")], eos_token_id=0)


def test_size_not_a_multiple_of_the_dtype(tmp_path):
    path = tmp_path / "odd.npy"
    path.write_bytes(b"\x01\x00\x00\x00" * 100 + b"\x01\x00")
    with pytest.raises(DataError, match="402 bytes, not a multiple of its dtype uint32 \\(4 bytes\\)"):
        _build([str(path)], eos_token_id=0)


def test_sidecar_disagreeing_with_the_file(tmp_path):
    path = write_tokens(str(tmp_path / "p.npy"), synthetic_tokens(1000))
    with open(path, "ab") as fh:
        fh.write(b"\x00\x00")
    with pytest.raises(DataError, match="holds 1001 tokens but its sidecar says 1000"):
        _build([path])


def test_token_ids_at_or_above_the_vocab(tmp_path):
    tokens = synthetic_tokens(1000, high=8000)
    tokens[500] = 8999
    path = write_tokens(str(tmp_path / "p.npy"), tokens)
    _build([path], vocab_size=9000)
    with pytest.raises(DataError, match=r"token id 8999 \(in .*p.npy\) is >= the model's vocab_size 8192"):
        _build([path], vocab_size=8192)


def test_raw_file_max_id_is_scanned_once_and_cached(tmp_path):
    tokens = synthetic_tokens(5000, high=777, dtype="uint32")
    path = write_tokens(str(tmp_path / "raw.npy"), tokens, sidecar=False)
    f = open_token_file(path)
    cache = str(tmp_path / "cache")
    assert max_token_id(f, cache) == 776
    (cached,) = [os.path.join(r, n) for r, _, ns in os.walk(cache) for n in ns]
    os.utime(cached)  # the second call reads the cache file
    assert max_token_id(f, cache) == 776


def test_source_smaller_than_one_instance(tmp_path):
    path = write_tokens(str(tmp_path / "p.npy"), synthetic_tokens(10))
    with pytest.raises(DataError, match="not one instance of seq_len 16"):
        _build([path])


@pytest.mark.parametrize("spec,match", [("*.npy", "matches no files"), ("dir", "holds no metadata.json")],
                         ids=["glob", "dir"])
def test_empty_globs_and_dirs(tmp_path, spec, match):
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match=match):
        _build([str(tmp_path / spec)])


def test_raw_files_are_checked_against_the_vocab_as_they_are_read(tmp_path):
    tokens = synthetic_tokens(1600, high=500, dtype="uint32")
    tokens[805] = 70_000  # in instance 50 of 100
    path = write_tokens(str(tmp_path / "raw.npy"), tokens, sidecar=False)
    ld = build_train_loader(DataConfig(sources=[path], eos_token_id=0, validation_fraction=0.0, prefetch=0),
                            seq_len=16, global_batch_size=10, micro_batch_size=10, rank=0, world_size=1, seed=0,
                            vocab_size=8192)  # no full scan at start-up
    with pytest.raises(DataError, match=r"token id 70000 in .*raw.npy is >= the model's vocab_size 8192"):
        for step in range(10):  # one pass: the bad instance is read in one of these steps
            ld.micro_batches(step)


def test_unfinished_tokenisation_dir_is_an_error(tmp_path):
    write_tokens(str(tmp_path / "part-00000.npy"), synthetic_tokens(100))
    with open(tmp_path / "part-00000.npy.json", "w") as fh:
        fh.write('{"job": "abc", "dtype": "uint16", "num_tokens": 100}')
    with pytest.raises(DataError, match="tokenisation did not finish.*re-run"):
        _build([str(tmp_path)])
