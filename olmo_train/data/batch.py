"""Batch: what the model and the loss take, built from instances of seq_len + 1 tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100


@dataclass(slots=True)
class Batch:
    input_ids: torch.Tensor  # [mb, T] int64
    labels: torch.Tensor  # [mb, T] int64: next token, IGNORE_INDEX (-100) where ignored
    doc_lens: torch.Tensor | None  # [n_docs] int64 over input_ids.view(-1), cut at row ends; sums to mb * T
    sample_ids: torch.Tensor  # [mb] int64: global sample index of each row (validation: validation instance)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """`doc_lens` stays on the host: the model plans its kernels from it there (a device copy would cost a
        device-to-host sync in every forward)."""
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.input_ids), move(self.labels), self.doc_lens, move(self.sample_ids))

    def pin_memory(self) -> Batch:
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return Batch(pin(self.input_ids), pin(self.labels), pin(self.doc_lens), pin(self.sample_ids))

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()

    @property
    def num_label_tokens(self) -> int:
        """Tokens that count in the loss."""
        return int((self.labels != IGNORE_INDEX).sum())


def doc_lens_of(input_ids: np.ndarray, eos_token_id: int) -> np.ndarray:
    """[mb, T] -> [n_docs]: a document ends after each EOS and at each row end."""
    mb, seq_len = input_ids.shape
    ends = np.flatnonzero(input_ids.reshape(-1) == eos_token_id) + 1
    ends = np.union1d(ends, np.arange(1, mb + 1, dtype=np.int64) * seq_len)
    return np.diff(ends, prepend=0)


def make_batch(tokens: np.ndarray, sample_ids: np.ndarray, eos_token_id: int, *, document_mask: bool = True,
               mask_document_ends: bool = True) -> Batch:
    """tokens [mb, T + 1] int64 (-1 = past the end of a file) -> Batch of [mb, T]."""
    input_ids = tokens[:, :-1]
    labels = tokens[:, 1:].copy()
    labels[labels < 0] = IGNORE_INDEX
    if mask_document_ends:
        labels[input_ids == eos_token_id] = IGNORE_INDEX
    doc_lens = torch.from_numpy(doc_lens_of(input_ids, eos_token_id)) if document_mask else None
    return Batch(torch.from_numpy(np.ascontiguousarray(input_ids)), torch.from_numpy(labels), doc_lens,
                 torch.from_numpy(np.asarray(sample_ids, dtype=np.int64)))
