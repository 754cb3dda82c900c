"""transformers' `olmo_hybrid` format both ways: config.json + safetensors, names mapped 1:1.

Pure functions (`to_hf_config`, `from_hf_config`, `to_hf_state_dict`, `from_hf_state_dict`) work on plain
dicts, so a training checkpoint's full state dict converts without building a model; `save_hf` / `load_hf`
wrap them for a model and a directory.

Names: `embed` <-> `model.embed_tokens`, `norm` <-> `model.norm`, `lm_head` <-> `lm_head`, `blocks.i` <->
`model.layers.i` with, inside a block:
    attention block:  attn -> self_attn, attn_norm -> post_attention_layernorm, mlp_norm -> post_feedforward_layernorm
    GDN block:        gdn -> linear_attn, gdn_norm -> input_layernorm,         mlp_norm -> post_attention_layernorm
Everything below those (q_proj, conv1d.weight, A_log, ...) keeps its name and shape.

Those are transformers' in-memory names. On disk, transformers (and the released checkpoint) store two norms under
other names (input_layernorm as attention_layer_norm, post_attention_layernorm as feedforward_layer_norm) and the
short conv as three tensors q_conv1d, k_conv1d, v_conv1d; `save_hf` writes that layout, `load_hf` reads either.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from olmo_train.errors import CheckpointError, ConfigError
from olmo_train.model.common.init import canonical_name
from olmo_train.model.olmo_hybrid.config import OlmoHybridConfig
from olmo_train.model.olmo_hybrid.model import OlmoHybrid

_BLOCK_RENAMES = {  # our block kind -> {our submodule: HF submodule}
    "attn": {"attn": "self_attn", "attn_norm": "post_attention_layernorm", "mlp": "mlp",
             "mlp_norm": "post_feedforward_layernorm"},
    "gdn": {"gdn": "linear_attn", "gdn_norm": "input_layernorm", "mlp": "mlp", "mlp_norm": "post_attention_layernorm"},
}
_TOP_RENAMES = {"embed": "model.embed_tokens", "norm": "model.norm", "lm_head": "lm_head"}
_HF_KIND = {"attn": "full_attention", "gdn": "linear_attention"}
_HF_IGNORED = re.compile(r"^mtp\.|rotary_emb\.")  # HF's multi-token-prediction heads and rope buffers
SAFETENSORS_NAME, INDEX_NAME = "model.safetensors", "model.safetensors.index.json"
_DISK_NORMS = {"input_layernorm": "attention_layer_norm", "post_attention_layernorm": "feedforward_layer_norm"}
_CONV_PARTS = ("q_conv1d", "k_conv1d", "v_conv1d")


# ---- configs ---------------------------------------------------------------------------------------------


def to_hf_config(cfg: OlmoHybridConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The config.json of transformers' OlmoHybridForCausalLM for `cfg`."""
    return {
        "architectures": ["OlmoHybridForCausalLM"], "model_type": "olmo_hybrid",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layers, "layer_types": [_HF_KIND[k] for k in cfg.block_kinds],
        "num_attention_heads": cfg.attn_n_heads, "num_key_value_heads": cfg.attn_n_kv_heads,
        "head_dim": cfg.attn_head_dim, "attention_bias": False, "attention_dropout": 0.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "linear_num_key_heads": cfg.gdn_n_heads, "linear_num_value_heads": cfg.gdn_n_v_heads,
        "linear_key_head_dim": cfg.gdn_head_k_dim, "linear_value_head_dim": cfg.gdn_head_v_dim,
        "linear_conv_kernel_dim": cfg.gdn_conv_size, "linear_allow_neg_eigval": cfg.gdn_allow_neg_eigval,
        "linear_a_log_min": cfg.gdn_a_log_range[0], "linear_a_log_max": cfg.gdn_a_log_range[1],
        "linear_dt_min": cfg.gdn_dt_range[0], "linear_dt_max": cfg.gdn_dt_range[1],
        "linear_dt_init_floor": cfg.gdn_dt_floor, "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps,
        "initializer_range": cfg.init_std, "max_position_embeddings": cfg.max_seq_len,
        "tie_word_embeddings": False, "use_cache": True, "bos_token_id": None,
        "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
        "dtype": str(dtype).removeprefix("torch."),
    }


def _pattern_of(layer_types: list[str]) -> list[str]:
    """The shortest repeating pattern of block kinds behind HF's layer_types."""
    ours = {v: k for k, v in _HF_KIND.items()}
    unknown = sorted(set(layer_types) - set(ours))
    if unknown:
        raise ConfigError(f"HF config layer_types has unsupported kinds {unknown}; valid: {sorted(ours)}")
    kinds = [ours[t] for t in layer_types]
    n = len(kinds)
    for p in range(1, n + 1):
        if n % p == 0 and kinds == kinds[:p] * (n // p):
            return kinds[:p]
    raise AssertionError("unreachable")


def _hf_rope_theta(d: dict[str, Any]) -> float | None:
    rope = d.get("rope_parameters")
    if isinstance(rope, dict):
        if rope.get("rope_type", "default") != "default":
            raise ConfigError(f"HF config rope_parameters={rope}: only rope_type 'default' (or rope_theta null "
                              "for NoPE) is supported")
        return rope.get("rope_theta")
    return d.get("rope_theta", 10000.0)  # transformers' default when nothing is given


def from_hf_config(d: dict[str, Any]) -> OlmoHybridConfig:
    """Our config for a transformers `olmo_hybrid` config.json (missing keys take transformers' defaults)."""
    if d.get("model_type", "olmo_hybrid") != "olmo_hybrid":
        raise ConfigError(f"HF config model_type={d.get('model_type')!r}: expected 'olmo_hybrid'")
    for key, wanted in (("hidden_act", "silu"), ("attention_bias", False), ("tie_word_embeddings", False)):
        if d.get(key, wanted) != wanted:
            raise ConfigError(f"HF config {key}={d[key]!r} is not supported; OlmoHybrid needs {key}={wanted!r}")
    n_layers = d.get("num_hidden_layers", 32)
    layer_types = d.get("layer_types") or [
        "full_attention" if i % 4 == 3 else "linear_attention" for i in range(n_layers)]
    d_model, heads = d.get("hidden_size", 3840), d.get("num_attention_heads", 30)
    gdn_heads = d.get("linear_num_key_heads") or heads
    return OlmoHybridConfig(
        vocab_size=d.get("vocab_size", 100352), d_model=d_model, n_layers=len(layer_types),
        layer_pattern=_pattern_of(layer_types), mlp_hidden=d.get("intermediate_size", 11008),
        attn_n_heads=heads, attn_n_kv_heads=d.get("num_key_value_heads") or heads,
        attn_head_dim=d.get("head_dim") or d_model // heads, rope_theta=_hf_rope_theta(d),
        gdn_n_heads=gdn_heads, gdn_n_v_heads=d.get("linear_num_value_heads") or heads,
        gdn_head_k_dim=d.get("linear_key_head_dim"), gdn_head_v_dim=d.get("linear_value_head_dim"),
        gdn_conv_size=d.get("linear_conv_kernel_dim", 4), gdn_allow_neg_eigval=d.get("linear_allow_neg_eigval", True),
        gdn_a_log_range=(d.get("linear_a_log_min", 0.0), d.get("linear_a_log_max", 16.0)),
        gdn_dt_range=(d.get("linear_dt_min", 1e-3), d.get("linear_dt_max", 0.1)),
        gdn_dt_floor=d.get("linear_dt_init_floor", 1e-4), norm_eps=d.get("rms_norm_eps", 1e-6),
        init_std=d.get("initializer_range", 0.02), max_seq_len=d.get("max_position_embeddings", 65536),
        eos_token_id=_single_id(d.get("eos_token_id")), pad_token_id=d.get("pad_token_id"))


def _single_id(value: int | list[int] | None) -> int | None:
    return value[0] if isinstance(value, list) and value else value


# ---- state dicts -----------------------------------------------------------------------------------------


def _block_kind(keys: set[str], prefix: str, markers: dict[str, str]) -> str:
    for kind, marker in markers.items():
        if any(k.startswith(f"{prefix}{marker}.") for k in keys):
            return kind
    raise CheckpointError(f"cannot tell the block kind of {prefix!r}: it has neither attention nor GDN weights")


def to_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> transformers' names (tensors untouched; wrapper prefixes such as _orig_mod. dropped)."""
    state_dict = {canonical_name(k): v for k, v in state_dict.items()}
    keys, out = set(state_dict), {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"blocks\.(\d+)\.([^.]+)\.(.+)", key)
        if m:
            i, sub, rest = m.groups()
            kind = _block_kind(keys, f"blocks.{i}.", {"attn": "attn", "gdn": "gdn"})
            if sub not in _BLOCK_RENAMES[kind]:
                raise CheckpointError(f"unexpected parameter {key!r} in an OlmoHybrid state dict")
            out[f"model.layers.{i}.{_BLOCK_RENAMES[kind][sub]}.{rest}"] = value
            continue
        top, _, rest = key.partition(".")
        if top not in _TOP_RENAMES:
            raise CheckpointError(f"unexpected parameter {key!r} in an OlmoHybrid state dict")
        out[f"{_TOP_RENAMES[top]}.{rest}"] = value
    return out


def from_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' names -> ours (the inverse of `to_hf_state_dict`); HF's MTP heads are dropped."""
    keys, out = set(state_dict), {}
    top = {v: k for k, v in _TOP_RENAMES.items()}
    inverse = {kind: {v: k for k, v in names.items()} for kind, names in _BLOCK_RENAMES.items()}
    for key, value in state_dict.items():
        if _HF_IGNORED.search(key):
            continue
        m = re.fullmatch(r"model\.layers\.(\d+)\.([^.]+)\.(.+)", key)
        if m:
            i, sub, rest = m.groups()
            kind = _block_kind(keys, f"model.layers.{i}.", {"attn": "self_attn", "gdn": "linear_attn"})
            if sub not in inverse[kind]:
                raise CheckpointError(f"unexpected tensor {key!r} in an olmo_hybrid checkpoint")
            out[f"blocks.{i}.{inverse[kind][sub]}.{rest}"] = value
            continue
        head, _, rest = key.rpartition(".")
        if head not in top:
            raise CheckpointError(f"unexpected tensor {key!r} in an olmo_hybrid checkpoint")
        out[f"{top[head]}.{rest}"] = value
    return out


def hf_to_disk_layout(state_dict: dict[str, torch.Tensor], cfg: OlmoHybridConfig) -> dict[str, torch.Tensor]:
    """transformers' in-memory names -> its on-disk layout (what save_pretrained writes; the released files)."""
    out = {}
    key_dim = cfg.gdn_n_heads * cfg.gdn_head_k_dim
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".linear_attn.conv1d.")
        if leaf == "weight":  # [2 Kd + Vd, 1, W] -> q, k [Kd, 1, W] and v [Vd, 1, W]
            for part, chunk in zip(_CONV_PARTS, value.split([key_dim, key_dim, value.shape[0] - 2 * key_dim])):
                out[f"{prefix}.linear_attn.{part}.weight"] = chunk
            continue
        m = re.fullmatch(r"(model\.layers\.\d+\.)([^.]+)(\..+)", key)
        if m and m.group(2) in _DISK_NORMS:
            key = m.group(1) + _DISK_NORMS[m.group(2)] + m.group(3)
        out[key] = value
    return out


def hf_from_disk_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `hf_to_disk_layout`; in-memory names pass through unchanged."""
    memory_norms = {v: k for k, v in _DISK_NORMS.items()}
    out, convs = {}, {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"(.+\.linear_attn\.)(q_conv1d|k_conv1d|v_conv1d)\.weight", key)
        if m:
            convs.setdefault(m.group(1), {})[m.group(2)] = value
            continue
        m = re.fullmatch(r"(model\.layers\.\d+\.)([^.]+)(\..+)", key)
        if m and m.group(2) in memory_norms:
            key = m.group(1) + memory_norms[m.group(2)] + m.group(3)
        out[key] = value
    for prefix, parts in convs.items():
        if set(parts) != set(_CONV_PARTS):
            raise CheckpointError(f"{prefix}: has conv weights {sorted(parts)}, needs all of {list(_CONV_PARTS)}")
        out[f"{prefix}conv1d.weight"] = torch.cat([parts[p] for p in _CONV_PARTS], dim=0)
    return out


# ---- directories -----------------------------------------------------------------------------------------


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain CPU tensor (gathers a DTensor: every rank must call save_hf then)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().to("cpu").contiguous()


def save_hf(model: OlmoHybrid, path: str | Path, *, dtype: torch.dtype | None = None,
            max_shard_bytes: int = 5 * 2**30) -> None:
    """Writes `model` as a transformers `olmo_hybrid` checkpoint (config.json + safetensors) to `path`.

    `dtype` None keeps the parameters' dtype. Checkpoints above `max_shard_bytes` are split into shards with an
    index, as transformers writes them.
    """
    state = {k: _full(v) for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    save_state_dict_hf(state, model.config, path, max_shard_bytes=max_shard_bytes)


def save_state_dict_hf(state_dict: dict[str, torch.Tensor], cfg: OlmoHybridConfig, path: str | Path, *,
                       max_shard_bytes: int = 5 * 2**30) -> None:
    """Writes a full (unsharded) state dict of ours plus its config as an HF checkpoint directory."""
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in hf_to_disk_layout(to_hf_state_dict(state_dict), cfg).items()}
    dtype = next(iter(tensors.values())).dtype
    (out / "config.json").write_text(json.dumps(to_hf_config(cfg, dtype), indent=2) + "\n")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / SAFETENSORS_NAME), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def read_hf_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint directory (single file or sharded with an index), HF names."""
    from safetensors.torch import load_file

    root = Path(path)
    if (root / INDEX_NAME).exists():
        files = sorted(set(json.loads((root / INDEX_NAME).read_text())["weight_map"].values()))
    elif (root / SAFETENSORS_NAME).exists():
        files = [SAFETENSORS_NAME]
    else:
        raise CheckpointError(f"{root} holds neither {SAFETENSORS_NAME} nor {INDEX_NAME}; is it an HF checkpoint "
                              "directory saved with safetensors?")
    state: dict[str, torch.Tensor] = {}
    for fname in files:
        state.update(load_file(str(root / fname)))
    return state


def load_hf(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> OlmoHybrid:
    """An OlmoHybrid with the weights of a transformers `olmo_hybrid` checkpoint directory.

    `dtype` None keeps the checkpoint's dtype.
    """
    root = Path(path)
    if not (root / "config.json").exists():
        raise CheckpointError(f"{root / 'config.json'} is missing; load_hf needs an HF checkpoint directory")
    cfg = from_hf_config(json.loads((root / "config.json").read_text()))
    state = from_hf_state_dict(hf_from_disk_layout(read_hf_state_dict(root)))
    with torch.device("meta"):
        model = OlmoHybrid(cfg)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{root} does not fit its config: missing {missing[:8]}, unexpected {unexpected[:8]}")
    for name, param in model.state_dict().items():
        if tuple(state[name].shape) != tuple(param.shape):
            raise CheckpointError(f"{root}: {name} has shape {tuple(state[name].shape)}, the config implies "
                                  f"{tuple(param.shape)}")
    state = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    return model
