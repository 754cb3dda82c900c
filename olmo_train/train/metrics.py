"""Step metrics kept as tensors on the device and reduced across ranks in one all-reduce per interval.

Per step the loop records the loss sums, the counted tokens and the gradient norm (tensors, no host sync) and
the host timings. `flush()` stacks every pending step, all-reduces once, and returns one record per step:
step, loss, ce_loss, z_loss, lr, grad_norm, tokens, plus the interval's tokens_per_s, tokens_per_s_per_device,
mfu, step_time_s, data_wait_s, data_wait_frac and memory_gb. A non-finite loss raises at the flush.
"""

import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf: the run stops before a checkpoint can store the bad state."""


@dataclass(slots=True)
class _Pending:
    step: int
    ce_sum: torch.Tensor
    z_sum: torch.Tensor
    n_tokens: torch.Tensor  # global counted tokens of the step (already reduced)
    grad_norm: torch.Tensor
    lr: float
    step_time_s: float
    data_wait_s: float
    batch_tokens: int  # tokens in the global batch of the step (input positions, counted or not)
    tokens: int  # tokens trained in the run after this step


class MetricsTracker:
    def __init__(self, *, world_size: int, flops_per_token: float, peak_flops: float, z_loss_weight: float,
                 device: torch.device):
        self.world_size = world_size
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.z_loss_weight = z_loss_weight
        self.device = device
        self._pending: list[_Pending] = []

    def record(self, step: int, *, ce_sum: torch.Tensor, z_sum: torch.Tensor, n_tokens: torch.Tensor,
               grad_norm: torch.Tensor | float, lr: float, step_time_s: float, data_wait_s: float,
               batch_tokens: int, tokens: int) -> None:
        grad_norm = torch.as_tensor(grad_norm, dtype=torch.float32, device=self.device)
        self._pending.append(_Pending(step, ce_sum.detach().float(), z_sum.detach().float(),
                                      n_tokens.detach(), grad_norm.detach().float(), lr, step_time_s,
                                      data_wait_s, batch_tokens, tokens))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> list[dict]:
        """One record per pending step (collective: every rank calls it at the same steps)."""
        if not self._pending:
            return []
        pend, self._pending = self._pending, []
        sums = torch.stack([torch.stack([p.ce_sum, p.z_sum]) for p in pend])  # [S, 2]
        if dist.is_initialized() and self.world_size > 1:
            dist.all_reduce(sums)
        host = torch.cat([sums.flatten(), torch.stack([p.n_tokens.float() for p in pend]),
                          torch.stack([p.grad_norm.reshape(()) for p in pend])]).tolist()
        n = len(pend)
        ce, z = host[0:2 * n:2], host[1:2 * n:2]
        counted, norms = host[2 * n:3 * n], host[3 * n:]
        window_s = sum(p.step_time_s for p in pend)
        window_tokens = sum(p.batch_tokens for p in pend)
        shared = self._throughput(window_tokens, window_s, sum(p.data_wait_s for p in pend), n)
        records = []
        for i, p in enumerate(pend):
            ce_loss, z_loss = ce[i] / counted[i], z[i] / counted[i]
            loss = ce_loss + self.z_loss_weight * z_loss
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"loss is {loss} at step {p.step} (ce {ce_loss}, z {z_loss}, grad norm "
                                         f"{norms[i]}); lower trainer.optimizer.lr or check the data")
            records.append({"step": p.step, "loss": loss, "ce_loss": ce_loss, "z_loss": z_loss, "lr": p.lr,
                            "grad_norm": norms[i], "tokens": p.tokens, "step_time_s": p.step_time_s,
                            "data_wait_s": p.data_wait_s, "time": time.time(), **shared})
        return records

    def _throughput(self, tokens: int, seconds: float, data_wait_s: float, n_steps: int) -> dict:
        per_s = tokens / seconds if seconds > 0 else 0.0
        per_device = per_s / self.world_size
        return {"tokens_per_s": per_s, "tokens_per_s_per_device": per_device,
                "mfu": per_device * self.flops_per_token / self.peak_flops if self.peak_flops else 0.0,
                "data_wait_frac": data_wait_s / seconds if seconds > 0 else 0.0,
                "mean_step_time_s": seconds / n_steps, "memory_gb": memory_gb(self.device)}


def memory_gb(device: torch.device) -> float:
    """Peak allocated accelerator memory (GiB) on CUDA; resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30
