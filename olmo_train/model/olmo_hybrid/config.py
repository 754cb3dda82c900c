"""The OLMo Hybrid architecture as data: sizes, head layouts and a pattern of block kinds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from olmo_train.errors import ConfigError

BlockKind = Literal["gdn", "attn"]
BLOCK_KINDS: tuple[str, ...] = ("gdn", "attn")


def _fail(name: str, value: object, fix: str) -> None:
    raise ConfigError(f"OlmoHybridConfig.{name}={value!r}: {fix}")


@dataclass(kw_only=True, slots=True)
class OlmoHybridConfig:
    """A hybrid Gated DeltaNet / attention decoder (OLMo Hybrid). Presets live in `presets.py`."""

    vocab_size: int
    """Rows of the embedding and the LM head. Must exceed every token id the data holds (`check_vocab`)."""
    d_model: int
    """Width of the residual stream."""
    n_layers: int
    """Number of blocks; a whole number of repeats of `layer_pattern`."""
    layer_pattern: list[str] = field(default_factory=lambda: ["gdn", "gdn", "gdn", "attn"])
    """Block kinds repeated to `n_layers`: "gdn" (pre-norm Gated DeltaNet) or "attn" (post-norm attention).
    Needs at least one of each."""
    mlp_hidden: int
    """Hidden width of every SwiGLU MLP."""

    attn_n_heads: int
    """Query heads of the attention blocks."""
    attn_n_kv_heads: int | None = None
    """Key/value heads of the attention blocks (grouped-query attention); None = `attn_n_heads`."""
    attn_head_dim: int | None = None
    """Width of one attention head; None = `d_model // attn_n_heads` (then it must divide)."""
    rope_theta: float | None = 500_000.0
    """RoPE base of the attention blocks; None = no positional encoding (NoPE). Unused by GDN blocks."""

    gdn_n_heads: int
    """Query/key heads of the Gated DeltaNet blocks."""
    gdn_n_v_heads: int | None = None
    """Value heads of the GDN blocks (a multiple of `gdn_n_heads`); None = `gdn_n_heads`."""
    gdn_head_k_dim: int | None = None
    """Query/key width of one GDN head; None = 0.75 * d_model / gdn_n_heads (as in the released model; must divide)."""
    gdn_head_v_dim: int | None = None
    """Value width of one GDN head; None = 2 * `gdn_head_k_dim`."""
    gdn_conv_size: int = 4
    """Kernel width of the depthwise causal convolutions on q, k and v (fla supports 2 to 4)."""
    gdn_allow_neg_eigval: bool = True
    """beta = 2 * sigmoid(.) when True (state transition eigenvalues in [-1, 1]); sigmoid(.) when False."""
    gdn_a_log_range: tuple[float, float] = (0.0, 16.0)
    """Init only: A_log = log(U(lo, hi)), the per-head decay rate."""
    gdn_dt_range: tuple[float, float] = (1e-3, 0.1)
    """Init only: dt is log-uniform in this range, then dt_bias = softplus^-1(dt)."""
    gdn_dt_floor: float = 1e-4
    """Init only: dt is clamped to at least this before the inverse softplus."""

    norm_eps: float = 1e-6
    """Epsilon of every RMSNorm except the GDN output norm (fixed at 1e-5 by the HF format)."""
    init_std: float = 0.02
    """Std of the truncated normal (cut at 3 std) of every linear and embedding weight."""
    max_seq_len: int = 65536
    """Written to the HF config (max_position_embeddings); the model itself has no length limit."""
    eos_token_id: int | None = None
    """Written to the HF config; None = unset."""
    pad_token_id: int | None = None
    """Written to the HF config; None = unset."""

    def __post_init__(self) -> None:
        self.layer_pattern = list(self.layer_pattern)
        self.gdn_a_log_range = tuple(self.gdn_a_log_range)
        self.gdn_dt_range = tuple(self.gdn_dt_range)
        self._fill_defaults()
        self._check_sizes()
        self._check_pattern()
        self._check_heads()
        self._check_init()

    def _fill_defaults(self) -> None:
        if self.attn_n_kv_heads is None:
            self.attn_n_kv_heads = self.attn_n_heads
        if self.attn_head_dim is None and self.attn_n_heads > 0:
            if self.d_model % self.attn_n_heads:
                _fail("attn_head_dim", None, f"d_model={self.d_model} is not divisible by attn_n_heads="
                      f"{self.attn_n_heads}; set attn_head_dim explicitly or pick a head count that divides it")
            self.attn_head_dim = self.d_model // self.attn_n_heads
        if self.gdn_n_v_heads is None:
            self.gdn_n_v_heads = self.gdn_n_heads
        if self.gdn_head_k_dim is None and self.gdn_n_heads > 0:
            if (3 * self.d_model) % (4 * self.gdn_n_heads):
                _fail("gdn_head_k_dim", None, f"0.75 * d_model={self.d_model} is not divisible by gdn_n_heads="
                      f"{self.gdn_n_heads}; set gdn_head_k_dim explicitly or pick a head count that divides it")
            self.gdn_head_k_dim = 3 * self.d_model // (4 * self.gdn_n_heads)
        if self.gdn_head_v_dim is None and self.gdn_head_k_dim is not None:
            self.gdn_head_v_dim = 2 * self.gdn_head_k_dim

    def _check_sizes(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "mlp_hidden", "attn_n_heads", "gdn_n_heads",
                     "attn_n_kv_heads", "attn_head_dim", "gdn_n_v_heads", "gdn_head_k_dim", "gdn_head_v_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                _fail(name, value, "must be a positive integer")
        if not 2 <= self.gdn_conv_size <= 4:
            _fail("gdn_conv_size", self.gdn_conv_size, "must be 2, 3 or 4 (the widths fla's causal conv supports)")
        if self.rope_theta is not None and self.rope_theta <= 0:
            _fail("rope_theta", self.rope_theta, "must be positive, or None for no positional encoding")
        if self.attn_head_dim % 2 and self.rope_theta is not None:
            _fail("attn_head_dim", self.attn_head_dim, "must be even for RoPE (or set rope_theta=None)")
        for name in ("eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                _fail(name, value, f"must lie in [0, vocab_size={self.vocab_size}) or be None")

    def _check_pattern(self) -> None:
        pattern = self.layer_pattern
        if not pattern:
            _fail("layer_pattern", pattern,
                  'must be a non-empty list of block kinds, e.g. ["gdn", "gdn", "gdn", "attn"]')
        unknown = [k for k in pattern if k not in BLOCK_KINDS]
        if unknown:
            _fail("layer_pattern", pattern, f"unknown block kinds {unknown}; valid kinds are {list(BLOCK_KINDS)}")
        for kind in BLOCK_KINDS:
            if kind not in pattern:
                _fail("layer_pattern", pattern, f'has no "{kind}" block; a hybrid needs at least one "gdn" and '
                      'one "attn" (e.g. ["gdn", "gdn", "gdn", "attn"])')
        if self.n_layers % len(pattern):
            _fail("n_layers", self.n_layers, f"must be a multiple of len(layer_pattern)={len(pattern)}")

    def _check_heads(self) -> None:
        if self.attn_n_heads % self.attn_n_kv_heads:
            _fail("attn_n_kv_heads", self.attn_n_kv_heads,
                  f"must divide attn_n_heads={self.attn_n_heads} (each kv head serves a whole group of heads)")
        if self.gdn_n_v_heads % self.gdn_n_heads:
            _fail("gdn_n_v_heads", self.gdn_n_v_heads,
                  f"must be a multiple of gdn_n_heads={self.gdn_n_heads} (grouped value heads)")

    def _check_init(self) -> None:
        lo, hi = self.gdn_a_log_range
        if not 0 <= lo < hi:
            _fail("gdn_a_log_range", self.gdn_a_log_range, "needs 0 <= lo < hi (A = U(lo, hi), A_log = log A)")
        lo, hi = self.gdn_dt_range
        if not 0 < lo <= hi:
            _fail("gdn_dt_range", self.gdn_dt_range, "needs 0 < lo <= hi")
        if self.init_std <= 0:
            _fail("init_std", self.init_std, "must be positive")

    # ---- derived quantities -------------------------------------------------------------------------------

    @property
    def block_kinds(self) -> list[str]:
        """The kind of every block, `layer_pattern` repeated to `n_layers`."""
        return self.layer_pattern * (self.n_layers // len(self.layer_pattern))

    @property
    def n_attn_layers(self) -> int:
        return self.block_kinds.count("attn")

    @property
    def n_gdn_layers(self) -> int:
        return self.block_kinds.count("gdn")

    def check_vocab(self, max_token_id: int, *, source: str = "the data") -> None:
        """Raises ConfigError unless every token id up to `max_token_id` has an embedding row."""
        if max_token_id >= self.vocab_size:
            raise ConfigError(
                f"OlmoHybridConfig.vocab_size={self.vocab_size} is too small: {source} holds token id "
                f"{max_token_id}; set model vocab_size >= {max_token_id + 1} (a multiple of 128 is fastest) "
                "or use the tokenizer the model preset was made for")

    def replace(self, **changes: object) -> OlmoHybridConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)
