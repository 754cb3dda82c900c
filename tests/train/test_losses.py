"""The chunked and fused LM losses against the full-logits one: values, gradients, ignored labels, memory."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from olmo_train.train.losses import IGNORE_INDEX, chunked_lm_loss_sums, fused_lm_loss, lm_loss_sums


def make_inputs(n: int, d: int, vocab: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
    weight = (torch.randn(vocab, d, generator=gen, dtype=torch.float64) * 0.5).to(dtype)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < 0.2] = IGNORE_INDEX
    labels[0] = IGNORE_INDEX
    return hidden, weight, labels


def with_objective(ce: torch.Tensor, z: torch.Tensor, z_weight: float):
    return ce + z_weight * z, ce, z


IMPLS = {  # (hidden, weight, labels, chunk, z_weight) -> (objective, ce_sum, z_sum)
    "full": lambda h, w, y, chunk, zw: with_objective(*lm_loss_sums(h @ w.T, y), zw),
    "chunked": lambda h, w, y, chunk, zw: with_objective(*chunked_lm_loss_sums(h, w, y, chunk_tokens=chunk), zw),
    "fused": lambda h, w, y, chunk, zw: fused_lm_loss(h, w, y, ce_weight=1.0, z_weight=zw, chunk_tokens=chunk),
}
CHUNKED = ["chunked", "fused"]


def sums_and_grads(impl: str, hidden, weight, labels, chunk: int = 16, z_weight: float = 0.3):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    objective, ce, z = IMPLS[impl](h, w, labels, chunk, z_weight)
    objective.backward()
    return ce.detach(), z.detach(), h.grad, w.grad


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("impl", CHUNKED)
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-6), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("n,chunk", [(127, 16), (63, 64), (63, 1000), (50, 7)],
                         ids=["odd-n-chunk-not-dividing", "one-partial-chunk", "chunk-larger", "small-chunks"])
def test_chunked_matches_full(impl: str, dtype: torch.dtype, rtol: float, n: int, chunk: int) -> None:
    hidden, weight, labels = make_inputs(n, 24, 301, dtype)
    want = sums_and_grads("full", hidden, weight, labels)
    got = sums_and_grads(impl, hidden, weight, labels, chunk=chunk)
    for name, a, b in zip(("ce_sum", "z_sum", "grad_hidden", "grad_weight"), got, want):
        assert a.dtype == b.dtype == dtype, name
        err = relative_error(a, b)
        assert err <= rtol, f"{name}: relative error {err:.2e} > {rtol}"


@pytest.mark.parametrize("impl", CHUNKED)
def test_ignored_tokens_count_for_nothing(impl: str) -> None:
    hidden, weight, labels = make_inputs(40, 8, 50, torch.float64)
    labels[10:] = IGNORE_INDEX
    ce, z, grad_h, _ = sums_and_grads(impl, hidden, weight, labels, chunk=7)
    ce_kept, z_kept, _, _ = sums_and_grads("full", hidden[:10], weight, labels[:10])
    torch.testing.assert_close((ce, z), (ce_kept, z_kept), rtol=1e-12, atol=0)
    assert torch.count_nonzero(grad_h[10:]) == 0 and torch.count_nonzero(grad_h[1:10]) > 0


@pytest.mark.parametrize("impl", CHUNKED)
def test_batched_shapes_and_autocast_dtype(impl: str) -> None:
    """[B, T, d] hidden states under CPU autocast: logits rounded to bf16 as the head's output would be."""
    hidden, weight, labels = make_inputs(2 * 33, 16, 97, torch.float32)
    hidden, labels = hidden.view(2, 33, 16), labels.view(2, 33)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sums_and_grads(impl, hidden, weight, labels, chunk=10)
        want = sums_and_grads("full", hidden, weight, labels)  # `h @ w.T` autocasts like the head's linear
    assert got[2].dtype == got[3].dtype == torch.float32  # gradients reach the float32 leaves
    for name, a, b in zip(("ce_sum", "z_sum", "grad_hidden", "grad_weight"), got, want):
        err = relative_error(a, b)
        assert err < 1e-2, f"{name}: relative error {err:.2e} (bf16 rounding is ~4e-3)"


def test_fused_objective_weights_and_incoming_gradient() -> None:
    """The fused loss's gradient is that of ce_weight * ce + z_weight * z (tensor weights, as the trainer passes
    them), scaled by the gradient arriving at the objective (DeepSpeed divides by accumulation steps);
    ce_sum and z_sum are for logging and carry none."""
    hidden, weight, labels = make_inputs(45, 12, 77, torch.float64)
    ce_w, z_w, incoming = torch.tensor(0.37, dtype=torch.float64), 0.011, 0.25
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    objective, ce, z = fused_lm_loss(h, w, labels, ce_weight=ce_w, z_weight=z_w, chunk_tokens=8)
    assert not ce.requires_grad and not z.requires_grad
    (objective * incoming).backward()
    h_ref, w_ref = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ce_ref, z_ref = lm_loss_sums(h_ref @ w_ref.T, labels)
    ((ce_w * ce_ref + z_w * z_ref) * incoming).backward()
    torch.testing.assert_close((objective, ce, z), (ce_w * ce_ref + z_w * z_ref, ce_ref, z_ref), rtol=1e-12, atol=0)
    torch.testing.assert_close((h.grad, w.grad), (h_ref.grad, w_ref.grad), rtol=1e-10, atol=1e-14)


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
    saved = {impl: largest_saved(lambda impl=impl: IMPLS[impl](h, w, labels, chunk, 0.3)) for impl in IMPLS}
    assert saved["full"] >= n * vocab  # the check sees what the full path keeps
    for impl in CHUNKED:  # only the inputs (chunked) or their gradients (fused) are kept
        assert saved[impl] == max(n * d, vocab * d), impl
    produced = {}
    for impl in IMPLS:
        with LargestOutput() as mode:
            sums_and_grads(impl, hidden, weight, labels, chunk=chunk)
        produced[impl] = mode.largest
    assert produced["full"] >= n * vocab
    for impl in CHUNKED:  # one chunk's logits at most, forward and backward
        assert produced[impl] == chunk * vocab, impl


@pytest.mark.parametrize("impl", CHUNKED)
def test_bad_chunk_size(impl: str) -> None:
    hidden, weight, labels = make_inputs(4, 4, 8, torch.float32)
    with pytest.raises(ValueError, match="chunk_tokens=0"):
        IMPLS[impl](hidden, weight, labels, 0, 0.3)


def test_model_head_loss_equals_logits_path() -> None:
    """The trainer's route: the loss runs inside the model's call (its head), same values and parameter grads."""
    from olmo_train.model import OlmoHybrid, presets

    torch.manual_seed(0)
    model = OlmoHybrid(presets.tiny())
    ids = torch.randint(0, model.config.vocab_size, (2, 37))
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = IGNORE_INDEX
    doc_lens = torch.tensor([20, 17, 37])
    runs = {}
    for impl in IMPLS:
        model.zero_grad(set_to_none=True)
        if impl == "full":
            objective, ce, z = with_objective(*lm_loss_sums(model(ids, doc_lens=doc_lens), labels), 1e-2)
        else:
            objective, ce, z = model(ids, doc_lens=doc_lens, head_loss=lambda h, w, impl=impl: IMPLS[impl](
                h, w, labels, 16, 1e-2))
        objective.backward()
        runs[impl] = (ce.detach(), z.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    ce_f, z_f, g_f = runs["full"]
    for impl in CHUNKED:
        ce_c, z_c, g_c = runs[impl]
        torch.testing.assert_close((ce_c, z_c), (ce_f, z_f), rtol=1e-6, atol=0)
        for name in g_f:
            torch.testing.assert_close(g_c[name], g_f[name], rtol=1e-4, atol=1e-7, msg=f"{impl}: {name}")


def test_loss_impl_is_validated() -> None:
    from olmo_train.errors import ConfigError
    from olmo_train.train.config import TrainerConfig

    assert TrainerConfig().loss_impl == "fused"
    with pytest.raises(ConfigError, match="trainer.loss_impl='fuzed'; valid: fused, chunked, full"):
        TrainerConfig(loss_impl="fuzed")
