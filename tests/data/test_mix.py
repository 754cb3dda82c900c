import numpy as np
import pytest
import yaml

from olmo_train.data import DataConfig, build_train_loader
from olmo_train.errors import DataError
from tests.data.conftest import synthetic_tokens, write_tokens

SEQ = 32


@pytest.fixture
def three_sources(tmp_path):
    """Sources a, b, c with ids in disjoint ranges, so each row tells its source; sizes 500, 250, 125 instances."""
    for name, (lo, n) in {"a": (1, 16000), "b": (1000, 8000), "c": (2000, 4000)}.items():
        write_tokens(str(tmp_path / name / "part-0.npy"), synthetic_tokens(n, low=lo, high=lo + 900, seed=lo))
    return tmp_path


def _write_mix(tmp_path, sources, **top):
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump({**top, "sources": sources}))
    return str(path)


def _loader(mix, gbs=16):
    return build_train_loader(DataConfig(mix=mix, validation_fraction=0.0, prefetch=0), seq_len=SEQ,
                              global_batch_size=gbs, micro_batch_size=gbs, rank=0, world_size=1, seed=0)


def _source_share(loader, steps):
    rows = np.concatenate([loader.micro_batches(s)[0].input_ids.numpy() for s in range(steps)])
    src = (rows.max(axis=1) // 1000).clip(0, 2)  # ids a: <1000, b: 1000-1900, c: 2000-2900
    return np.bincount(src, minlength=3) / len(src)


def test_weights_are_followed(three_sources):
    mix = _write_mix(three_sources, [{"name": "a", "paths": ["a"], "weight": 0.2},
                                     {"name": "b", "paths": ["b"], "weight": 0.5},
                                     {"name": "c", "paths": ["c/part-*.npy"], "weight": 0.3, "max_repetition": 4}])
    ld = _loader(mix)
    counts = ld.dataset.counts
    # one pass is the largest that repeats no source beyond its cap: b (250 instances, cap 1) limits it to 500
    assert counts == [100, 250, 150]
    # exact over one full pass (500 instances = 31 steps of 16, plus 4)
    src, _ = ld.dataset.locate(np.arange(sum(counts)), ld.seed)
    assert np.bincount(src).tolist() == counts
    # Tolerance: over 40 steps (640 rows: one exact pass of 500, then 140 random draws) each share is within
    # 0.05 of its weight, more than 5 sigma of the random part.
    share = _source_share(ld, 40)
    assert np.allclose(share, [0.2, 0.5, 0.3], atol=0.05), share


def test_token_budgets_and_total(three_sources):
    mix = _write_mix(three_sources, [{"name": "a", "paths": ["a"], "weight": 1.0},
                                     {"name": "c", "paths": ["c"], "tokens": 100 * SEQ, "max_repetition": 2}],
                     total_tokens=400 * SEQ)
    assert _loader(mix).dataset.counts == [300, 100]


def test_repetition_repeats_every_instance_equally(three_sources):
    mix = _write_mix(three_sources, [{"name": "c", "paths": ["c"], "tokens": 250 * SEQ, "max_repetition": 2}])
    ld = _loader(mix)
    _, local = ld.dataset.locate(np.arange(250), ld.seed)
    assert np.bincount(local).tolist() == [2] * 125


def test_repetition_beyond_the_cap_is_an_error(three_sources):
    mix = _write_mix(three_sources, [{"name": "c", "paths": ["c"], "tokens": 250 * SEQ}])
    with pytest.raises(DataError, match="'c' would be repeated 2.00 times.*max_repetition 1.0"):
        _loader(mix)


def test_mixed_dtypes_are_an_error(three_sources):
    write_tokens(str(three_sources / "wide" / "p.npy"), synthetic_tokens(4000, dtype="uint32"))
    mix = _write_mix(three_sources, [{"name": "a", "paths": ["a"], "weight": 1},
                                     {"name": "wide", "paths": ["wide"], "weight": 1}])
    with pytest.raises(DataError, match=r"mixes token dtypes \['uint16', 'uint32'\]"):
        _loader(mix)


def test_mixed_tokenizers_are_an_error(three_sources):
    write_tokens(str(three_sources / "other" / "p.npy"), synthetic_tokens(4000), tokenizer_hash="another")
    with pytest.raises(DataError, match="mixes tokenizers"):
        build_train_loader(DataConfig(sources=[str(three_sources / "a"), str(three_sources / "other")]),
                           seq_len=SEQ, global_batch_size=4, micro_batch_size=4, rank=0, world_size=1, seed=0)


@pytest.mark.parametrize("sources,match", [
    ([{"name": "a", "paths": ["a"]}], "exactly one of `weight` and `tokens`"),
    ([{"name": "a", "paths": ["a"], "weight": 1, "tokens": 5}], "exactly one of"),
    ([{"name": "a", "paths": ["a"], "wieght": 1}], "unknown keys \\['wieght'\\]"),
    ([{"name": "a", "paths": ["nope"], "weight": 1}], "nope does not exist"),
    ([{"paths": ["a"], "weight": 1}], "needs `name` and `paths`"),
    ([], "non-empty `sources:`"),
], ids=["no-weight", "both", "typo", "missing-path", "no-name", "empty"])
def test_bad_mix_files(three_sources, sources, match):
    with pytest.raises(DataError, match=match):
        _loader(_write_mix(three_sources, sources))


def test_missing_mix_file(tmp_path):
    with pytest.raises(DataError, match="mix file .*nope.yaml does not exist"):
        _loader(str(tmp_path / "nope.yaml"))
