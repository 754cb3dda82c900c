import pytest
from omegaconf import OmegaConf

from olmo_train.data import DataConfig
from olmo_train.errors import ConfigError


def test_omegaconf_can_hold_the_config():
    base = OmegaConf.structured(DataConfig)
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(["sources=[/a,/b]", "validation_fraction=0.1"]))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, DataConfig) and cfg.sources == ["/a", "/b"] and cfg.validation_fraction == 0.1
    with pytest.raises(Exception):
        OmegaConf.merge(base, OmegaConf.from_dotlist(["+no_such_field=1"]))


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.setenv("OLMO_TRAIN_CACHE", str(tmp_path))
    assert DataConfig().resolved_cache_dir() == str(tmp_path)
    monkeypatch.delenv("OLMO_TRAIN_CACHE")
    assert DataConfig().resolved_cache_dir().endswith(".cache/olmo-train")
    assert DataConfig(cache_dir="/x").resolved_cache_dir() == "/x"


@pytest.mark.parametrize("kw,match", [
    ({"validation_fraction": 0.9}, "validation_fraction"),
    ({"dtype": "int8"}, "dtype"),
    ({"prefetch": -1}, "prefetch"),
    ({"eos_token_id": -2}, "eos_token_id"),
    ({"stdlib_vocab_size": 100}, "stdlib_vocab_size"),
    ({"num_workers": 0}, "num_workers"),
    ({"sources": "/a"}, "lists of paths"),
], ids=["fraction", "dtype", "prefetch", "eos", "vocab", "workers", "str-sources"])
def test_invalid_values(kw, match):
    with pytest.raises(ConfigError, match=match):
        DataConfig(**kw)
