import time

import pytest
import torch

from olmo_train.errors import ConfigError
from olmo_train.model import OlmoHybrid, presets
from tests.model.conftest import small_config

EXACT_7B_PARAMS = 7_430_870_688


@pytest.mark.parametrize("changes, field", [
    (dict(layer_pattern=["gdn", "gdn"]), "layer_pattern"),
    (dict(layer_pattern=["attn"]), "layer_pattern"),
    (dict(layer_pattern=["gdn", "mamba"]), "layer_pattern"),
    (dict(layer_pattern=[]), "layer_pattern"),
    (dict(n_layers=6), "n_layers"),
    (dict(d_model=66, attn_n_heads=4), "attn_head_dim"),
    (dict(attn_n_kv_heads=3), "attn_n_kv_heads"),
    (dict(gdn_n_heads=5), "gdn_head_k_dim"),
    (dict(gdn_n_v_heads=3), "gdn_n_v_heads"),
    (dict(attn_head_dim=15), "attn_head_dim"),
    (dict(gdn_conv_size=5), "gdn_conv_size"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(eos_token_id=96), "eos_token_id"),
    (dict(gdn_a_log_range=(4.0, 1.0)), "gdn_a_log_range"),
], ids=["no-attn", "no-gdn", "unknown-kind", "empty", "not-multiple", "heads-dont-divide", "kv-heads",
        "gdn-heads-dont-divide", "v-heads", "odd-rope-dim", "conv", "vocab", "eos", "a-log"])
def test_impossible_configs_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=f"OlmoHybridConfig.{field}="):
        small_config(**changes)


def test_check_vocab_names_the_fix():
    cfg = small_config()
    cfg.check_vocab(95)
    with pytest.raises(ConfigError, match=r"vocab_size=96 is too small.*token id 96.*vocab_size >= 97"):
        cfg.check_vocab(96)


def test_pattern_is_data():
    cfg = small_config(n_layers=8, layer_pattern=["gdn", "attn"])
    assert cfg.block_kinds == ["gdn", "attn"] * 4
    model = OlmoHybrid(cfg)
    assert [b.kind for b in model.blocks] == cfg.block_kinds


def test_presets_are_valid_and_listed():
    assert presets.names()[0] == "tiny" and "olmo_hybrid_7b" in presets.names()
    for name in presets.names():
        assert presets.get(name).n_layers % 4 == 0
    with pytest.raises(ConfigError, match="valid presets"):
        presets.get("olmo_hybrid_70b")
    tiny = presets.tiny()
    assert tiny.vocab_size == 8192 and tiny.n_layers == 4 and 128 <= tiny.d_model <= 256


def test_7b_exact_size_on_meta_in_seconds():
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = OlmoHybrid(presets.olmo_hybrid_7b())
    assert time.perf_counter() - t0 < 10
    assert all(p.is_meta for p in model.parameters())
    assert model.num_params() == EXACT_7B_PARAMS
    assert model.num_params(include_embedding=False) == EXACT_7B_PARAMS - 100352 * 3840
    cfg = model.config
    assert (cfg.n_gdn_layers, cfg.n_attn_layers, cfg.gdn_head_k_dim, cfg.gdn_head_v_dim) == (24, 8, 96, 192)


def test_flops_per_token_formula():
    with torch.device("meta"):
        model = OlmoHybrid(presets.olmo_hybrid_7b())
    n = EXACT_7B_PARAMS - 100352 * 3840
    assert model.flops_per_token(8192) == 6 * n + 6 * 8 * 3840 * 8192
    assert 43e9 < model.flops_per_token(8192) < 45e9  # DESIGN.md: ~44 GFLOP
