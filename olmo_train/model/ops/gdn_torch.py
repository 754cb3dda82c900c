"""Chunked gated delta rule in plain PyTorch: runs anywhere (CPU tests, the default demo), keeps documents apart.

The recurrence, per head, with the state S of shape [K, V], decay a_t = exp(g_t) and write strength beta_t:

    S_t = a_t S_{t-1} + k_t u_t^T,   u_t = beta_t (v_t - a_t S_{t-1}^T k_t),   o_t = S_t^T q_t

Inside a chunk of C tokens starting from the state S0, with G_t = exp(g_1 + ... + g_t) (the decay since the
chunk start), the writes u solve a unit lower-triangular system

    (I + A) u = beta v - (beta G k) S0,    A[t, s] = beta_t (G_t / G_s) k_t . k_s   for s < t,

so u = U0 - W S0 with U0 = (I + A)^-1 beta v and W = (I + A)^-1 beta G k, both independent of S0. Then

    o_t = G_t S0^T q_t + sum_{s <= t} (G_t / G_s) (q_t . k_s) u_s
    S_C = G_C S0 + sum_s (G_C / G_s) k_s u_s^T.

Only the last two lines run sequentially over chunks. Documents (cu_seqlens) are laid out chunk-aligned (each
padded to a multiple of C) and the state is zeroed at the first chunk of each, so no chunk mixes documents.
Everything runs in float32 (or float64 if given), gradients come from autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

L2NORM_EPS = 1e-6


def l2norm(x: torch.Tensor, eps: float = L2NORM_EPS) -> torch.Tensor:
    """x / sqrt(|x|^2 + eps) over the last dim (the same formula as fla's kernels)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def chunk_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                           beta: torch.Tensor, *, scale: float | None = None, l2norm_qk: bool = True,
                           cu_seqlens: torch.Tensor | None = None, chunk_size: int = 64) -> torch.Tensor:
    """Gated delta rule over q, k [B, T, H, K], v [B, T, HV, V], g (log decay), beta [B, T, HV] -> [B, T, HV, V].

    HV may be a multiple of H (grouped value heads). With `cu_seqlens` ([N + 1], fla's convention) B must be 1
    and the N documents are independent. `scale` defaults to K ** -0.5; q and k are L2-normalised first when
    `l2norm_qk`. The output has v's dtype; the math runs in float32 (float64 inputs stay float64).
    """
    out_dtype = v.dtype
    work = torch.float64 if v.dtype == torch.float64 else torch.float32
    B, T, H, K = q.shape
    HV = v.shape[2]
    if k.shape != q.shape or HV % H or g.shape != v.shape[:3] or beta.shape != v.shape[:3]:
        raise ValueError(f"gated delta rule: bad shapes q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)} "
                         f"g {tuple(g.shape)} beta {tuple(beta.shape)}")
    if HV != H:
        q, k = (x.repeat_interleave(HV // H, dim=2) for x in (q, k))
    q, k, v, g, beta = (x.to(work) for x in (q, k, v, g, beta))
    if l2norm_qk:
        q, k = l2norm(q), l2norm(k)
    q = q * (K ** -0.5 if scale is None else scale)
    if cu_seqlens is None:
        return _chunk_scan(q, k, v, g, beta, chunk_size, resets=None).to(out_dtype)
    if B != 1:
        raise ValueError(f"with cu_seqlens the batch must be flattened to B=1, got B={B}")
    dest, padded_len, resets = _chunk_aligned_layout(cu_seqlens, chunk_size)
    dest = dest.to(q.device)

    def spread(x: torch.Tensor) -> torch.Tensor:  # [1, T, ...] -> [1, padded_len, ...], zeros in the gaps
        return x.new_zeros((1, padded_len, *x.shape[2:])).index_copy(1, dest, x)

    o = _chunk_scan(*(spread(x) for x in (q, k, v, g, beta)), chunk_size, resets=resets)
    return o.index_select(1, dest).to(out_dtype)


def _chunk_aligned_layout(cu_seqlens: torch.Tensor, chunk: int) -> tuple[torch.Tensor, int, list[bool]]:
    """Token i of the flat batch goes to dest[i]; each document starts a fresh chunk (resets[n] is True there)."""
    cu = cu_seqlens.detach().to("cpu", torch.int64)
    lens = cu[1:] - cu[:-1]
    padded = (lens + chunk - 1) // chunk * chunk
    padded_starts = F.pad(padded.cumsum(0), (1, 0))
    in_doc = torch.arange(int(cu[-1]), device="cpu") - cu[:-1].repeat_interleave(lens)  # position in document
    dest = padded_starts[:-1].repeat_interleave(lens) + in_doc
    padded_len = int(padded_starts[-1])
    resets = [False] * (padded_len // chunk)
    for start in padded_starts[:-1].tolist():
        resets[start // chunk] = True
    return dest, padded_len, resets


def _chunk_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                chunk: int, resets: list[bool] | None) -> torch.Tensor:
    """The chunked recurrence on [B, T, H, *] inputs (q already normalised and scaled) -> o [B, T, H, V]."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    pad = (-T) % chunk
    if pad:  # zero k, v, beta and g = 0 after the end change nothing before it
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, 0, 0, pad)) for x in (g, beta))
    N = (T + pad) // chunk

    def to_chunks(x: torch.Tensor) -> torch.Tensor:  # [B, N*C, H, *] -> [B, H, N, C, *]
        return x.reshape(B, N, chunk, H, -1).permute(0, 3, 1, 2, 4)

    q, k, v = to_chunks(q), to_chunks(k), to_chunks(v)
    g, beta = to_chunks(g)[..., 0], to_chunks(beta)  # [B, H, N, C], [B, H, N, C, 1]
    log_G = g.cumsum(-1)  # [B, H, N, C]
    incl = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    # decay[t, s] = G_t / G_s for s <= t, else 0; masked in log space so nothing overflows
    decay = torch.where(incl, log_G[..., :, None] - log_G[..., None, :], float("-inf")).exp()  # [B, H, N, C, C]
    k_beta = k * beta
    A = (k_beta @ k.transpose(-1, -2)) * decay.tril(-1)
    eye = torch.eye(chunk, dtype=q.dtype, device=q.device)
    rhs = torch.cat([v * beta, k_beta * log_G.exp()[..., None]], dim=-1)  # [B, H, N, C, V + K]
    U0, W = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True).split([V, K], dim=-1)
    intra = (q @ k.transpose(-1, -2)) * decay  # [B, H, N, C, C]
    q_G = q * log_G.exp()[..., None]
    k_to_end = k * (log_G[..., -1:] - log_G).exp()[..., None]  # k_s * G_C / G_s
    chunk_decay = log_G[..., -1].exp()[..., None, None]  # [B, H, N, 1, 1]
    state = q.new_zeros(B, H, K, V)
    outs = []
    # unbind once: indexing chunk n inside the loop would make autograd build a full-size zero tensor per chunk
    per_chunk = zip(*(x.unbind(2) for x in (U0, W, q_G, intra, chunk_decay, k_to_end.transpose(-1, -2))))
    for n, (u0, w, qg, a_intra, c_decay, k_end_t) in enumerate(per_chunk):
        if resets is not None and resets[n] and n > 0:
            state = torch.zeros_like(state)
        u = u0 - w @ state  # [B, H, C, V]
        outs.append(qg @ state + a_intra @ u)
        state = state * c_decay + k_end_t @ u
    o = torch.stack(outs, dim=2)  # [B, H, N, C, V]
    return o.permute(0, 2, 3, 1, 4).reshape(B, N * chunk, H, V)[:, :T]
