"""Where packed documents start and end inside a [B, T] batch (`doc_lens` -> cu_seqlens and friends)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from olmo_train.errors import DataError


@dataclass(frozen=True, slots=True)
class Packing:
    """Documents of a batch flattened to B * T tokens; every kernel uses it to keep documents apart."""

    cu_seqlens: torch.Tensor
    """[N + 1] int64 on the batch's device: document boundaries in the flattened batch (fla's convention)."""
    cu_seqlens_cpu: torch.Tensor
    """The same on the CPU (so kernels can plan without a device sync)."""
    max_len: int
    """Longest document."""
    positions: torch.Tensor
    """[B, T] int64: position of each token inside its document (RoPE and the causal conv use it)."""
    doc_ids: torch.Tensor
    """[B, T] int64: index of each token's document (attention masks on CPU use it)."""

    @property
    def n_docs(self) -> int:
        return self.cu_seqlens_cpu.numel() - 1


def make_packing(doc_lens: torch.Tensor | None, batch: int, seq_len: int,
                 device: torch.device) -> Packing | None:
    """Checks `doc_lens` (1-D document lengths over input_ids.view(-1)) and builds the Packing; None stays None.

    Each row must hold a whole number of documents, so `doc_lens.sum() == batch * seq_len` and no document
    crosses a row end. `doc_lens` on the host costs no device sync (the loader keeps it there).
    """
    if doc_lens is None:
        return None
    lens = doc_lens.detach().to("cpu", torch.int64)
    if lens.dim() != 1 or lens.numel() == 0:
        raise DataError(f"doc_lens must be a non-empty 1-D tensor of document lengths, got shape {tuple(lens.shape)}")
    if bool((lens <= 0).any()):
        raise DataError(f"doc_lens must be positive, got {lens.tolist()[:16]}...")
    cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0))
    total = int(cu[-1])
    if total != batch * seq_len:
        raise DataError(f"doc_lens sums to {total} but the batch holds {batch} x {seq_len} = {batch * seq_len} "
                        "tokens; give the length of every document of input_ids.view(-1), in order")
    row_ends = torch.arange(1, batch + 1, device="cpu") * seq_len
    if not bool(torch.isin(row_ends, cu).all()):
        raise DataError(f"a document in doc_lens crosses a row end (rows are {seq_len} tokens long); cut "
                        "documents at row ends so each row is a whole number of documents")
    starts = cu[:-1].repeat_interleave(lens)  # [B * T]
    flat_pos = torch.arange(total, device="cpu") - starts
    doc_ids = torch.arange(lens.numel(), device="cpu").repeat_interleave(lens)
    return Packing(cu_seqlens=_upload(cu, device), cu_seqlens_cpu=cu, max_len=int(lens.max()),
                   positions=_upload(flat_pos.view(batch, seq_len), device),
                   doc_ids=_upload(doc_ids.view(batch, seq_len), device))


def _upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor to `device`; to CUDA through pinned memory, so the copy queues behind the running kernels
    instead of waiting for them (a pageable copy synchronises the stream)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
