"""Named model sizes: the released OLMo Hybrid 7B, 7B-width slices and smaller models for one GPU, and `tiny`."""

from __future__ import annotations

from collections.abc import Callable

from olmo_train.errors import ConfigError
from olmo_train.model.olmo_hybrid.config import OlmoHybridConfig

DOLMA2_VOCAB = 100352  # dolma2 tokenizer (100278 ids used), padded to a multiple of 128
DOLMA2_EOS, DOLMA2_PAD = 100257, 100277
DEFAULT_TOKENIZER_VOCAB = 8192  # the byte-level BPE that olmo_train.data trains on the stdlib corpus


def olmo_hybrid_7b(n_layers: int = 32) -> OlmoHybridConfig:
    """OLMo Hybrid 7B as released (transformers' `olmo_hybrid` defaults), with RoPE theta 5e5 as in pretraining.

    7,430,870,688 parameters at 32 layers (24 Gated DeltaNet + 8 attention). Fewer layers (a multiple of 4) give
    a same-width slice for benchmarks.
    """
    return OlmoHybridConfig(
        vocab_size=DOLMA2_VOCAB, d_model=3840, n_layers=n_layers, layer_pattern=["gdn", "gdn", "gdn", "attn"],
        mlp_hidden=11008, attn_n_heads=30, attn_n_kv_heads=30, rope_theta=500_000.0,
        gdn_n_heads=30, gdn_n_v_heads=30, gdn_head_k_dim=96, gdn_head_v_dim=192, gdn_conv_size=4,
        norm_eps=1e-6, max_seq_len=65536, eos_token_id=DOLMA2_EOS, pad_token_id=DOLMA2_PAD)


def olmo_hybrid_7b_4l() -> OlmoHybridConfig:
    """One 3:1 group (3 GDN + 1 attention) at full 7B width and vocab: the single-GPU benchmark model."""
    return olmo_hybrid_7b(n_layers=4)


def olmo_hybrid_1b() -> OlmoHybridConfig:
    """About 1.3 B parameters (0.4 B in embedding + head) for single-GPU training benchmarks."""
    return OlmoHybridConfig(
        vocab_size=DOLMA2_VOCAB, d_model=2048, n_layers=16, mlp_hidden=5632, attn_n_heads=16,
        rope_theta=500_000.0, gdn_n_heads=16, gdn_head_k_dim=96, gdn_head_v_dim=192,
        eos_token_id=DOLMA2_EOS, pad_token_id=DOLMA2_PAD)


def small() -> OlmoHybridConfig:
    """About 0.15 B parameters (most in embedding + head): quick GPU runs with the dolma2 vocabulary."""
    return OlmoHybridConfig(
        vocab_size=DOLMA2_VOCAB, d_model=512, n_layers=8, mlp_hidden=1408, attn_n_heads=8,
        rope_theta=500_000.0, gdn_n_heads=8, gdn_head_k_dim=48, gdn_head_v_dim=96,
        eos_token_id=DOLMA2_EOS, pad_token_id=DOLMA2_PAD)


def tiny() -> OlmoHybridConfig:
    """A 4-layer (one 3:1 group) model for CPU tests and the default demo; vocab of the default tokenizer."""
    return OlmoHybridConfig(
        vocab_size=DEFAULT_TOKENIZER_VOCAB, d_model=128, n_layers=4, mlp_hidden=384, attn_n_heads=4,
        rope_theta=500_000.0, gdn_n_heads=4, gdn_head_k_dim=32, gdn_head_v_dim=64, max_seq_len=4096)


_PRESETS: dict[str, Callable[[], OlmoHybridConfig]] = {
    "tiny": tiny, "small": small, "olmo_hybrid_1b": olmo_hybrid_1b, "olmo_hybrid_7b_4l": olmo_hybrid_7b_4l,
    "olmo_hybrid_7b": olmo_hybrid_7b,
}


def names() -> list[str]:
    """Every preset name, smallest first."""
    return list(_PRESETS)


def get(name: str) -> OlmoHybridConfig:
    """The preset `name` as a fresh config."""
    if name not in _PRESETS:
        raise ConfigError(f"model preset {name!r} does not exist; valid presets are {names()}")
    return _PRESETS[name]()
