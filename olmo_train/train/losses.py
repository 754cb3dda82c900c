"""Language-model loss: token cross-entropy plus PaLM's z-loss, as sums over the tokens that count.

The trainer divides both sums by the number of counted tokens in the whole global batch (all ranks, all
micro-batches), so the gradient does not depend on how the batch is split over ranks and micro-batches.

Three implementations with the same result (up to rounding), `trainer.loss_impl`:
- `full`, `lm_loss_sums(logits, labels)`: from full logits [B, T, V] (their float32 copy and its gradient are
  [N, V] each: 3.3 GB apiece for 8192 tokens of the 100352-token vocabulary).
- `chunked`, `chunked_lm_loss_sums(hidden, weight, labels)`: from the final hidden states and the LM head weight,
  token chunk by token chunk; backward recomputes each chunk's logits, so no [N, V] tensor ever exists (the extra
  memory is one chunk's logits) at the price of one more [chunk, d] x [d, V] matmul per chunk.
- `fused`, `fused_lm_loss(hidden, weight, labels, ce_weight=, z_weight=)`: the objective
  `ce_weight * ce_sum + z_weight * z_sum` with its gradients computed in forward, chunk by chunk (one pass of
  logits, no recompute; on CUDA the per-chunk softmax/gradient math is one compiled kernel over bf16 logits).
  Backward only scales the stored gradients, so the weights must be known before forward (the trainer's are).
"""

import functools

import torch

IGNORE_INDEX = -100
DEFAULT_CHUNK_TOKENS = 4096
"""Tokens per chunk of the chunked loss: at vocab 100352 a chunk's float32 logits are 1.6 GB."""
FUSED_CHUNK_TOKENS = 8192
"""Tokens per chunk of the fused loss: at vocab 100352 a chunk's bf16 logits are 1.6 GB (one chunk for a
micro-batch of one 8192-token sequence, so the head's weight gradient is one matmul)."""


def lm_loss_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropy, sum of logsumexp^2) over tokens whose label is not IGNORE_INDEX, in float32
    (float64 for float64 logits).

    logits [B, T, V] (any float dtype), labels [B, T].
    """
    logits = logits.to(_wide(logits.dtype)).reshape(-1, logits.shape[-1])  # [N, V]
    labels = labels.reshape(-1)  # [N]
    counted = labels != IGNORE_INDEX
    safe_labels = torch.where(counted, labels, torch.zeros_like(labels))
    lse = torch.logsumexp(logits, dim=-1)  # [N]
    target = logits.gather(1, safe_labels.unsqueeze(1)).squeeze(1)  # [N]
    ce_sum = ((lse - target) * counted).sum()
    z_sum = (lse.square() * counted).sum()
    return ce_sum, z_sum


def count_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Number of counted (not ignored) label positions, as an int64 scalar tensor."""
    return (labels != IGNORE_INDEX).sum()


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype the loss math runs in: float32, or float64 for float64 inputs (exactness checks)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunked_lm_loss_sums(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """`lm_loss_sums(hidden @ weight.T, labels)` without materialising the logits of all tokens.

    hidden [..., d] (the final-normed hidden states), weight [V, d] (the LM head), labels [...] with
    IGNORE_INDEX for tokens that do not count. Logits are computed in the matmul dtype (autocast's, when autocast
    is on for hidden's device, else hidden's) and then taken to float32, as the full path does with the head's
    output; gradients follow the same rounding. Returns float32 scalars (ce_sum, z_sum); float64 for float64.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens} must be >= 1")
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    h = hidden.reshape(-1, hidden.shape[-1]).to(dtype)  # [N, d]
    w = weight.to(dtype)  # [V, d]; a no-op when the weight already has the compute dtype
    with torch.autocast(device_type, enabled=False):
        ce_sum, z_sum = _ChunkedLMLoss.apply(h, w, labels.reshape(-1), chunk_tokens)
    return ce_sum, z_sum


def _chunk_logits(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """[n, d] x [V, d] -> float32 logits [n, V], rounded to the matmul dtype first (as the head's output is)."""
    return (h @ w.T).to(_wide(h.dtype))


class _ChunkedLMLoss(torch.autograd.Function):
    """Forward keeps only (hidden, weight, labels); backward recomputes each chunk's logits (`_head_pass`)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor,
                chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        counted = labels != IGNORE_INDEX  # [N]
        safe = torch.where(counted, labels, torch.zeros_like(labels))
        lse = torch.empty(h.shape[0], dtype=_wide(h.dtype), device=h.device)  # [N]
        target = torch.empty_like(lse)
        for start in range(0, h.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = _chunk_logits(h[rows], w)  # [n, V]
            lse[rows] = torch.logsumexp(logits, dim=-1)
            target[rows] = logits.gather(1, safe[rows, None]).squeeze(1)
            del logits
        ctx.save_for_backward(h, w, safe, counted)
        ctx.chunk = chunk
        ce_sum = ((lse - target) * counted).sum()
        z_sum = (lse.square() * counted).sum()
        return ce_sum, z_sum

    @staticmethod
    def backward(ctx, grad_ce: torch.Tensor, grad_z: torch.Tensor):
        h, w, safe, counted = ctx.saved_tensors
        weights = torch.stack([grad_ce, grad_z]).to(_wide(h.dtype))  # [2]
        grad_h, grad_w, _, _ = _head_pass(h, w, safe, counted, weights, ctx.chunk, need_h=ctx.needs_input_grad[0],
                                          need_w=ctx.needs_input_grad[1])
        return grad_h, grad_w, None, None


def fused_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                  ce_weight: torch.Tensor | float, z_weight: torch.Tensor | float,
                  chunk_tokens: int = FUSED_CHUNK_TOKENS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(objective, ce_sum, z_sum): objective = ce_weight * ce_sum + z_weight * z_sum carries the gradient of
    `lm_loss_sums(hidden @ weight.T, labels)` so combined; ce_sum and z_sum are for logging (no gradient).

    Same inputs and rounding as `chunked_lm_loss_sums`; the weights are constants (no gradient flows to them).
    The gradients of hidden [..., d] and weight [V, d] are computed here, chunk by chunk, and held until
    backward (one [N, d] and one [V, d] tensor in the matmul dtype).
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens} must be >= 1")
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    h = hidden.reshape(-1, hidden.shape[-1]).to(dtype)  # [N, d]
    w = weight.to(dtype)  # [V, d]
    weights = torch.stack([torch.as_tensor(x, dtype=_wide(dtype), device=hidden.device).detach().reshape(())
                           for x in (ce_weight, z_weight)])  # [2]
    with torch.autocast(device_type, enabled=False):
        objective, ce_sum, z_sum = _FusedLMLoss.apply(h, w, labels.reshape(-1), weights, chunk_tokens)
    return objective, ce_sum, z_sum


def _loss_and_logit_grad(logits: torch.Tensor, safe: torch.Tensor, counted: torch.Tensor,
                         weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk: (d objective / d logits in the logits' dtype [n, V], lse [n], target logit [n]).

    The math runs in float32 (float64 for float64 logits). d ce / d logit = softmax - onehot(label),
    d z / d logit = 2 * lse * softmax, per counted token; `weights` = (ce_weight, z_weight).
    """
    x = logits.to(_wide(logits.dtype))
    lse = torch.logsumexp(x, dim=-1)  # [n]
    target = x.gather(1, safe[:, None]).squeeze(1)  # [n]
    ce_w = weights[0] * counted  # [n]
    row_scale = ce_w + 2.0 * weights[1] * counted * lse  # [n]
    is_label = torch.arange(x.shape[1], device=x.device)[None, :] == safe[:, None]  # [n, V]
    grad = torch.exp(x - lse[:, None]) * row_scale[:, None] - torch.where(is_label, ce_w[:, None], 0.0)
    return grad.to(logits.dtype), lse, target


@functools.cache
def _compiled_loss_and_logit_grad():
    """`_loss_and_logit_grad` as one fused kernel per chunk shape (reads the bf16 logits, writes their bf16
    gradient: no float32 [n, V] tensor). Compiled on first CUDA use only; the CPU runs it eagerly."""
    return torch.compile(_loss_and_logit_grad, dynamic=False)


def _head_pass(h: torch.Tensor, w: torch.Tensor, safe: torch.Tensor, counted: torch.Tensor, weights: torch.Tensor,
               chunk: int, *, need_h: bool, need_w: bool):
    """One pass over the token chunks: each chunk's logits, then the gradients of
    `weights[0] * ce_sum + weights[1] * z_sum` for h [N, d] and w [V, d] (None where not needed), lse [N] and the
    target logits [N]. The weight gradient sums over several chunks in float32, as one matmul would internally."""
    step = _compiled_loss_and_logit_grad() if h.is_cuda else _loss_and_logit_grad
    n = h.shape[0]
    lse = torch.empty(n, dtype=_wide(h.dtype), device=h.device)
    target = torch.empty_like(lse)
    grad_h = torch.empty_like(h) if need_h else None
    grad_w = None
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        dlogits, lse[rows], target[rows] = step(h[rows] @ w.T, safe[rows], counted[rows], weights)  # [n, V]
        if need_h:
            grad_h[rows] = dlogits @ w
        if need_w:
            part = dlogits.T @ h[rows]  # [V, d]
            if n <= chunk:
                grad_w = part
            else:
                grad_w = part.to(_wide(w.dtype)) if grad_w is None else grad_w.add_(part)
    return grad_h, None if grad_w is None else grad_w.to(w.dtype), lse, target


class _FusedLMLoss(torch.autograd.Function):
    """Forward computes the objective and its input gradients; backward scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        counted = labels != IGNORE_INDEX  # [N]
        safe = torch.where(counted, labels, torch.zeros_like(labels))
        grad_h, grad_w, lse, target = _head_pass(h, w, safe, counted, weights, chunk,
                                                 need_h=ctx.needs_input_grad[0], need_w=ctx.needs_input_grad[1])
        ce_sum = ((lse - target) * counted).sum()
        z_sum = (lse.square() * counted).sum()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.mark_non_differentiable(ce_sum, z_sum)
        objective = weights[0] * ce_sum + weights[1] * z_sum
        return objective, ce_sum, z_sum

    @staticmethod
    def backward(ctx, grad_objective: torch.Tensor, _grad_ce: torch.Tensor, _grad_z: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        # a 0-dim float32 factor keeps each gradient's dtype and multiplies in float32
        return (None if grad_h is None else grad_h * grad_objective,
                None if grad_w is None else grad_w * grad_objective, None, None, None)
