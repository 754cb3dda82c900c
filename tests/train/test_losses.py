"""The chunked LM loss against the full-logits one: values, gradients, ignored labels, memory behaviour."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from olmo_train.train.losses import IGNORE_INDEX, chunked_lm_loss_sums, lm_loss_sums


def make_inputs(n: int, d: int, vocab: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
    weight = (torch.randn(vocab, d, generator=gen, dtype=torch.float64) * 0.5).to(dtype)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < 0.2] = IGNORE_INDEX
    labels[0] = IGNORE_INDEX
    return hidden, weight, labels


def sums_and_grads(fn, hidden, weight, labels, z_weight: float = 0.3):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ce, z = fn(h, w, labels)
    (ce + z_weight * z).backward()
    return ce.detach(), z.detach(), h.grad, w.grad


def full(h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor):
    return lm_loss_sums(h @ w.T, labels)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-6), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("n,chunk", [(127, 16), (63, 64), (63, 1000), (50, 7)],
                         ids=["odd-n-chunk-not-dividing", "one-partial-chunk", "chunk-larger", "small-chunks"])
def test_chunked_matches_full(dtype: torch.dtype, rtol: float, n: int, chunk: int) -> None:
    hidden, weight, labels = make_inputs(n, 24, 301, dtype)
    want = sums_and_grads(full, hidden, weight, labels)
    got = sums_and_grads(lambda h, w, y: chunked_lm_loss_sums(h, w, y, chunk_tokens=chunk), hidden, weight, labels)
    for name, a, b in zip(("ce_sum", "z_sum", "grad_hidden", "grad_weight"), got, want):
        assert a.dtype == b.dtype == dtype, name
        err = float((a.double() - b.double()).norm() / b.double().norm())
        assert err <= rtol, f"{name}: relative error {err:.2e} > {rtol}"


def test_ignored_tokens_count_for_nothing() -> None:
    hidden, weight, labels = make_inputs(40, 8, 50, torch.float64)
    labels[10:] = IGNORE_INDEX
    ce, z, grad_h, _ = sums_and_grads(lambda h, w, y: chunked_lm_loss_sums(h, w, y, chunk_tokens=7),
                                      hidden, weight, labels)
    ce_kept, z_kept, _, _ = sums_and_grads(full, hidden[:10], weight, labels[:10])
    torch.testing.assert_close((ce, z), (ce_kept, z_kept), rtol=1e-12, atol=0)
    assert torch.count_nonzero(grad_h[10:]) == 0 and torch.count_nonzero(grad_h[1:10]) > 0


def test_batched_shapes_and_autocast_dtype() -> None:
    """[B, T, d] hidden states under CPU autocast: logits rounded to bf16 as the head's output would be."""
    hidden, weight, labels = make_inputs(2 * 33, 16, 97, torch.float32)
    hidden, labels = hidden.view(2, 33, 16), labels.view(2, 33)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sums_and_grads(lambda h, w, y: chunked_lm_loss_sums(h, w, y, chunk_tokens=10), hidden, weight, labels)
        want = sums_and_grads(lambda h, w, y: lm_loss_sums(torch.nn.functional.linear(h, w), y),
                              hidden, weight, labels)
    assert got[2].dtype == got[3].dtype == torch.float32  # gradients reach the float32 leaves
    for name, a, b in zip(("ce_sum", "z_sum", "grad_hidden", "grad_weight"), got, want):
        err = float((a.double() - b.double()).norm() / b.double().norm())
        assert err < 1e-2, f"{name}: relative error {err:.2e} (bf16 rounding is ~4e-3)"


class LargestOutput(TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def largest_saved(fn) -> int:
    sizes = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return max(sizes)


def test_never_materialises_all_logits() -> None:
    n, d, vocab, chunk = 300, 16, 1000, 64
    hidden, weight, labels = make_inputs(n, d, vocab, torch.float32)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    saved = {"chunked": largest_saved(lambda: chunked_lm_loss_sums(h, w, labels, chunk_tokens=chunk)),
             "full": largest_saved(lambda: full(h, w, labels))}
    assert saved["full"] >= n * vocab  # the check sees what the full path keeps
    assert saved["chunked"] == max(n * d, vocab * d)  # only the inputs themselves are kept
    produced = {}
    for name, fn in (("chunked", lambda a, b, y: chunked_lm_loss_sums(a, b, y, chunk_tokens=chunk)), ("full", full)):
        with LargestOutput() as mode:
            sums_and_grads(fn, hidden, weight, labels)
        produced[name] = mode.largest
    assert produced["full"] >= n * vocab
    assert produced["chunked"] == chunk * vocab  # one chunk's logits at most, forward and backward


def test_bad_chunk_size() -> None:
    hidden, weight, labels = make_inputs(4, 4, 8, torch.float32)
    with pytest.raises(ValueError, match="chunk_tokens=0"):
        chunked_lm_loss_sums(hidden, weight, labels, chunk_tokens=0)


def test_model_head_loss_equals_logits_path() -> None:
    """The trainer's route: the loss runs inside the model's call (its head), same values and parameter grads."""
    from functools import partial

    from olmo_train.model import OlmoHybrid, presets

    torch.manual_seed(0)
    model = OlmoHybrid(presets.tiny())
    ids = torch.randint(0, model.config.vocab_size, (2, 37))
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = IGNORE_INDEX
    doc_lens = torch.tensor([20, 17, 37])
    runs = []
    for chunked in (True, False):
        model.zero_grad(set_to_none=True)
        if chunked:
            ce, z = model(ids, doc_lens=doc_lens, head_loss=partial(chunked_lm_loss_sums, labels=labels,
                                                                    chunk_tokens=16))
        else:
            ce, z = lm_loss_sums(model(ids, doc_lens=doc_lens), labels)
        (ce + 1e-2 * z).backward()
        runs.append((ce.detach(), z.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (ce_c, z_c, g_c), (ce_f, z_f, g_f) = runs
    torch.testing.assert_close((ce_c, z_c), (ce_f, z_f), rtol=1e-6, atol=0)
    for name in g_f:
        torch.testing.assert_close(g_c[name], g_f[name], rtol=1e-4, atol=1e-7, msg=name)


def test_loss_impl_is_validated() -> None:
    from olmo_train.errors import ConfigError
    from olmo_train.train.config import TrainerConfig

    assert TrainerConfig().loss_impl == "chunked"
    with pytest.raises(ConfigError, match="trainer.loss_impl='fused'; valid: chunked, full"):
        TrainerConfig(loss_impl="fused")
