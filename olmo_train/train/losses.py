"""Language-model loss: token cross-entropy plus PaLM's z-loss, as sums over the tokens that count.

The trainer divides both sums by the number of counted tokens in the whole global batch (all ranks, all
micro-batches), so the gradient does not depend on how the batch is split over ranks and micro-batches.
"""

import torch

IGNORE_INDEX = -100


def lm_loss_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropy, sum of logsumexp^2) over tokens whose label is not IGNORE_INDEX, in float32.

    logits [B, T, V] (any float dtype), labels [B, T].
    """
    logits = logits.float().reshape(-1, logits.shape[-1])  # [N, V]
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
