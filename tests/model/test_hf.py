"""Our model against transformers' OlmoHybridForCausalLM (its PyTorch fallback) on the same weights."""

import json

import pytest
import torch

from olmo_train.errors import CheckpointError, ConfigError
from olmo_train.model import OlmoHybrid, hf
from tests.model.conftest import rel, small_config

transformers = pytest.importorskip("transformers")

CONFIGS = {
    "rope": dict(),
    "nope": dict(rope_theta=None),
    "gqa-headdim": dict(attn_n_heads=4, attn_n_kv_heads=2, attn_head_dim=24, gdn_n_heads=4, gdn_head_k_dim=8,
                        gdn_head_v_dim=24),
    "grouped-v-heads": dict(gdn_n_heads=2, gdn_n_v_heads=4, gdn_head_k_dim=16, gdn_head_v_dim=8,
                            gdn_allow_neg_eigval=False, gdn_conv_size=3),
    "8-layers-2-groups": dict(n_layers=8, layer_pattern=["gdn", "attn", "gdn", "gdn"], attn_n_heads=8),
}


def random_model(cfg, seed=1) -> OlmoHybrid:
    """Our model with init weights plus noise on the norms (so a swapped norm would show)."""
    model = OlmoHybrid(cfg)
    model.init_weights(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def hf_model_from(model: OlmoHybrid):
    cfg = hf.to_hf_config(model.config)
    hf_cfg = transformers.OlmoHybridConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "dtype")})
    hf_model = transformers.OlmoHybridForCausalLM(hf_cfg).eval()
    hf_model.load_state_dict(hf.to_hf_state_dict(model.state_dict()), strict=True)
    return hf_model


@pytest.mark.parametrize("name, seq_len", [(name, 77) for name in CONFIGS] + [("rope", 201), ("nope", 1)],
                         ids=list(CONFIGS) + ["rope-T201", "nope-T1"])
def test_logits_match_transformers(name, seq_len):
    model = random_model(small_config(**CONFIGS[name]))
    hf_model = hf_model_from(model)
    ids = torch.randint(0, model.config.vocab_size, (2, seq_len))  # not multiples of the chunk size (64)
    with torch.no_grad():
        ours, theirs = model(ids), hf_model(ids).logits
    assert rel(ours, theirs) < 1e-5


def test_save_hf_loads_in_transformers(tmp_path):
    model = random_model(small_config())
    hf.save_hf(model, tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == "OlmoHybridForCausalLM"
    ids = torch.randint(0, 96, (1, 50))
    with torch.no_grad():
        assert rel(model(ids), loaded(ids).logits) < 1e-5
    # the files use transformers' own on-disk layout (the released checkpoint's), key for key
    loaded.save_pretrained(tmp_path / "resaved")
    from safetensors import safe_open

    def keys(path):
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            return set(f.keys())

    assert keys(tmp_path) == keys(tmp_path / "resaved")


def test_transformers_checkpoint_loads_here(tmp_path):
    hf_cfg = transformers.OlmoHybridConfig(vocab_size=128, hidden_size=48, intermediate_size=64, num_hidden_layers=4,
                                           num_attention_heads=4, pad_token_id=1, eos_token_id=2,
                                           rope_parameters={"rope_type": "default", "rope_theta": None})
    torch.manual_seed(3)
    theirs = transformers.OlmoHybridForCausalLM(hf_cfg).eval()
    theirs.save_pretrained(tmp_path)
    ours = hf.load_hf(tmp_path)
    assert ours.config.rope_theta is None and ours.config.gdn_head_k_dim == 9
    ids = torch.randint(0, 128, (2, 33))
    with torch.no_grad():
        assert rel(ours(ids), theirs(ids).logits) < 1e-5


def test_sharded_save_round_trip(tmp_path):
    model = random_model(small_config())
    hf.save_hf(model, tmp_path, max_shard_bytes=40_000, dtype=torch.bfloat16)
    index = json.loads((tmp_path / hf.INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) > 1
    loaded = hf.load_hf(tmp_path)
    assert loaded.embed.weight.dtype == torch.bfloat16
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value.to(torch.bfloat16)), name


def test_state_dict_names_map_one_to_one():
    model = OlmoHybrid(small_config(n_layers=8))
    ours = model.state_dict()
    theirs = hf.to_hf_state_dict(ours)
    assert len(theirs) == len(ours)
    assert set(theirs) == set(transformers.OlmoHybridForCausalLM(
        transformers.OlmoHybridConfig(**{k: v for k, v in hf.to_hf_config(model.config).items()
                                         if k not in ("architectures", "dtype")})).state_dict())
    back = hf.from_hf_state_dict(theirs)
    assert list(back) == list(ours) and all(back[k] is ours[k] for k in ours)
    wrapped = {k.replace("blocks.1.", "blocks.1._checkpoint_wrapped_module."): v for k, v in ours.items()}
    assert hf.to_hf_state_dict(wrapped).keys() == theirs.keys()


def test_config_round_trip_and_released_defaults():
    cfg = small_config(n_layers=8, layer_pattern=["gdn", "attn", "gdn", "gdn"], rope_theta=None, eos_token_id=5)
    assert hf.from_hf_config(hf.to_hf_config(cfg)) == cfg
    released = hf.from_hf_config({"model_type": "olmo_hybrid"})  # transformers' defaults = the 7B release
    assert released.block_kinds == ["gdn", "gdn", "gdn", "attn"] * 8
    assert released.layer_pattern == ["gdn", "gdn", "gdn", "attn"]
    sizes = (released.d_model, released.gdn_head_k_dim, released.gdn_head_v_dim, released.mlp_hidden)
    assert sizes == (3840, 96, 192, 11008)
    with pytest.raises(ConfigError, match="tie_word_embeddings"):
        hf.from_hf_config({"tie_word_embeddings": True})


def test_7b_preset_is_transformers_default_config():
    """transformers' olmo_hybrid defaults are the released 7B; only RoPE differs (ours: theta 5e5 as pretrained)."""
    from olmo_train.model import presets

    theirs = hf.from_hf_config(transformers.OlmoHybridConfig().to_dict())
    assert theirs == presets.olmo_hybrid_7b().replace(rope_theta=theirs.rope_theta)


def test_load_hf_reports_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        hf.load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf.to_hf_config(small_config())))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        hf.load_hf(tmp_path)
