"""The evaluation loader over the held-out split, and perplexity."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from olmo_train.data.batch import IGNORE_INDEX, Batch, make_batch
from olmo_train.data.build import ValidationPart, resolve_data
from olmo_train.data.config import DataConfig
from olmo_train.errors import ConfigError, DataError


class EvalLoader:
    """Validation instances in a fixed order; global batch b goes to rank b % world_size. Every rank gets the same
    number of batches (a trailing part smaller than batch_size * world_size instances is left out)."""

    def __init__(self, parts: tuple[ValidationPart, ...], *, batch_size: int, rank: int, world_size: int,
                 eos_token_id: int, device: torch.device | str = "cpu", document_mask: bool = True,
                 mask_document_ends: bool = True) -> None:
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"eval batch_size {batch_size} must be >= 1 and rank {rank} in [0, {world_size}).")
        self.parts = parts
        self.starts = np.cumsum([0] + [p.count for p in parts])  # [n_parts + 1]
        self.num_instances = int(self.starts[-1])
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.eos_token_id = eos_token_id
        self.device = torch.device(device)
        self.document_mask, self.mask_document_ends = document_mask, mask_document_ends
        if len(self) == 0:
            raise DataError(f"the validation split has {self.num_instances} instances, fewer than one batch on "
                            f"every rank ({batch_size} x {world_size}). Fix: raise data.validation_fraction, give "
                            f"data.validation_sources, or lower the eval batch size.")

    def __len__(self) -> int:
        """Batches per rank."""
        return self.num_instances // (self.batch_size * self.world_size)

    def _read(self, index: int) -> np.ndarray:
        pi = int(np.searchsorted(self.starts, index, side="right")) - 1
        part = self.parts[pi]
        return part.source.read(part.start + index - int(self.starts[pi]))

    def batch(self, i: int) -> Batch:
        """This rank's i-th batch (0 <= i < len(self))."""
        first = (i * self.world_size + self.rank) * self.batch_size
        ids = np.arange(first, first + self.batch_size, dtype=np.int64)
        tokens = np.stack([self._read(int(j)) for j in ids])  # [batch_size, T + 1]
        batch = make_batch(tokens, ids, self.eos_token_id, document_mask=self.document_mask,
                           mask_document_ends=self.mask_document_ends)
        return batch if self.device.type == "cpu" else batch.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[Batch]:
        return (self.batch(i) for i in range(len(self)))


def build_eval_loader(cfg: DataConfig, *, seq_len: int, batch_size: int, rank: int, world_size: int,
                      device: torch.device | str = "cpu") -> EvalLoader:
    data = resolve_data(cfg, seq_len=seq_len)
    return EvalLoader(data.validation, batch_size=batch_size, rank=rank, world_size=world_size,
                      eos_token_id=data.train.eos_token_id, device=device, document_mask=cfg.document_mask,
                      mask_document_ends=cfg.mask_document_ends)


@dataclass(frozen=True, slots=True)
class EvalResult:
    loss: float
    """Mean cross-entropy in nats per label token, over every rank."""
    perplexity: float
    tokens: int
    """Label tokens counted, over every rank."""


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: EvalLoader, *, max_batches: int | None = None) -> EvalResult:
    """Perplexity of `model(input_ids, doc_lens=...) -> logits [B, T, V]`; sums all-reduced when distributed."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=loader.device)  # [loss sum, tokens]
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        logits = model(batch.input_ids, doc_lens=batch.doc_lens)  # [B, T, V]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch.labels.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum")
        totals += torch.stack([loss.double(), (batch.labels != IGNORE_INDEX).sum().double()])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    model.train(was_training)
    loss_sum, tokens = totals.tolist()
    mean = loss_sum / max(tokens, 1.0)
    return EvalResult(loss=mean, perplexity=math.exp(mean), tokens=int(tokens))
