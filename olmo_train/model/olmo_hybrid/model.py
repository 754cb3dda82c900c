"""The OLMo Hybrid decoder: an embedding, blocks chosen by kind from the config's pattern, a final norm, a head."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from olmo_train.model import ops
from olmo_train.model.common import Attention, GatedDeltaNet, RMSNorm, SwiGLU, init_module
from olmo_train.model.olmo_hybrid.config import OlmoHybridConfig


@dataclass(frozen=True, slots=True)
class SeqContext:
    """What every block needs to know about the batch besides its activations."""

    packing: ops.Packing | None
    """Document boundaries; None = each row is one sequence."""
    positions: torch.Tensor
    """[B or 1, T] int64 position of each token in its document (RoPE restarts at every document)."""


class AttentionBlock(nn.Module):
    """Post-norm (OLMo 2): h = x + attn_norm(attn(x)); out = h + mlp_norm(mlp(h))."""

    kind = "attn"

    def __init__(self, cfg: OlmoHybridConfig) -> None:
        super().__init__()
        self.attn = Attention(cfg.d_model, cfg.attn_n_heads, cfg.attn_n_kv_heads, cfg.attn_head_dim, cfg.norm_eps,
                              cfg.rope_theta)
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.mlp_hidden)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, x: torch.Tensor, ctx: SeqContext) -> torch.Tensor:  # [B, T, D] -> [B, T, D]
        h = x + self.attn_norm(self.attn(x, ctx.packing, ctx.positions))
        return h + self.mlp_norm(self.mlp(h))


class GatedDeltaNetBlock(nn.Module):
    """Pre-norm: h = x + gdn(gdn_norm(x)); out = h + mlp(mlp_norm(h))."""

    kind = "gdn"

    def __init__(self, cfg: OlmoHybridConfig) -> None:
        super().__init__()
        self.gdn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.gdn = GatedDeltaNet(cfg.d_model, cfg.gdn_n_heads, cfg.gdn_n_v_heads, cfg.gdn_head_k_dim,
                                 cfg.gdn_head_v_dim, cfg.gdn_conv_size, cfg.gdn_allow_neg_eigval,
                                 cfg.gdn_a_log_range, cfg.gdn_dt_range, cfg.gdn_dt_floor)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor, ctx: SeqContext) -> torch.Tensor:  # [B, T, D] -> [B, T, D]
        h = x + self.gdn(self.gdn_norm(x), ctx.packing)
        return h + self.mlp(self.mlp_norm(h))


BLOCK_TYPES: dict[str, type[nn.Module]] = {"attn": AttentionBlock, "gdn": GatedDeltaNetBlock}

HeadLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]
"""(hidden [B, T, d_model], head weight [vocab, d_model]) -> loss tensors, e.g. a chunked cross-entropy."""


class LMHead(nn.Linear):
    """The output projection. Given `head_loss`, returns `head_loss(x, self.weight)` instead of the logits.

    The loss runs inside this module's own call on purpose: FSDP2 (the root unit that holds the head) and
    DeepSpeed ZeRO-3 (a hook per module) gather the head weight around a module's forward and again before the
    backward of its outputs, so a loss that reads the weight directly stays correct under every backend.
    """

    def forward(self, x: torch.Tensor, head_loss: HeadLoss | None = None):
        if head_loss is None:
            return super().forward(x)  # [..., vocab]
        return head_loss(x, self.weight)


class OlmoHybrid(nn.Module):
    """`model(input_ids [B, T], doc_lens=None) -> logits [B, T, vocab]` in the parameters' dtype;
    `model(input_ids, doc_lens, head_loss=fn) -> fn(hidden [B, T, d_model], lm_head.weight)` (a loss that never
    forms the logits of all tokens; see `LMHead`).

    Built on the meta device (`with torch.device("meta"): OlmoHybrid(cfg)`) nothing is allocated; call
    `to_empty(device=...)` (or shard first) and then `init_weights(seed)`. Built elsewhere it is initialised
    at once with seed 0.
    """

    def __init__(self, config: OlmoHybridConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(BLOCK_TYPES[kind](config) for kind in config.block_kinds)
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = LMHead(config.d_model, config.vocab_size, bias=False)
        if not self.lm_head.weight.is_meta:
            self.init_weights(0)

    def init_weights(self, seed: int) -> None:
        """Every parameter from (seed, parameter name) alone; works on meta-built and FSDP2-sharded models."""
        init_module(self, seed, self.config.init_std)

    def hidden_states(self, input_ids: torch.Tensor, doc_lens: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] -> final-normed hidden states [B, T, d_model] (feed a chunked loss with lm_head)."""
        B, T = input_ids.shape
        packing = ops.make_packing(doc_lens, B, T, input_ids.device)
        # positions restart at every document, so a packed document sees what it would see alone
        positions = packing.positions if packing is not None else torch.arange(T, device=input_ids.device)[None]
        ctx = SeqContext(packing=packing, positions=positions)
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, ctx)
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor, doc_lens: torch.Tensor | None = None,
                head_loss: HeadLoss | None = None):
        """Logits [B, T, vocab], or what `head_loss(hidden, lm_head.weight)` returns. Passed through the call
        (not a separate method) so that FSDP2's and DeepSpeed's forward hooks wrap the loss too."""
        return self.lm_head(self.hidden_states(input_ids, doc_lens), head_loss)

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameter count (full tensors, also when sharded); the LM head always counts."""
        total = sum(p.numel() for p in self.parameters())
        return total if include_embedding else total - self.embed.weight.numel()

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward) at sequence length `seq_len`, for MFU:

            6 * N + 6 * n_attn_layers * attn_n_heads * attn_head_dim * seq_len

        N = parameters without the input embedding (a lookup) but with the LM head: each weight costs 2 FLOPs per
        token forward (multiply + add) and 4 backward. The second term is causal attention: q.k scores and the
        weighted sum of v cost 2 * 2 * width * seq_len per token forward for full attention; causality halves it,
        backward doubles the forward. The Gated DeltaNet state math (under 1% of the total at 7B, seq 8192),
        norms, activations and RoPE are not counted.
        """
        cfg = self.config
        attn = 6 * cfg.n_attn_layers * cfg.attn_n_heads * cfg.attn_head_dim * seq_len
        return 6 * self.num_params(include_embedding=False) + attn
