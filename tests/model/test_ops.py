"""Our CPU kernels against the float64 recurrence and against running each packed document alone."""

import sys

import pytest
import torch
import torch.nn.functional as F

from olmo_train.errors import DataError, EnvironmentSetupError
from olmo_train.model import ops
from olmo_train.model.ops import conv_torch, gdn_torch
from olmo_train.model.ops.gdn_reference import recurrent_gated_delta_rule_f64
from tests.model.conftest import rel


def gdn_inputs(B, T, H, HV, K, V, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, HV, V, generator=gen)
    g = -F.softplus(torch.randn(B, T, HV, generator=gen)) * 0.5  # log decay < 0
    beta = 2 * torch.rand(B, T, HV, generator=gen)  # negative eigenvalues allowed
    return [x.requires_grad_() for x in (q, k, v, g, beta)]


CASES = [
    dict(B=2, T=63, H=2, HV=2, K=16, V=32, cu=None),
    dict(B=1, T=200, H=3, HV=3, K=24, V=16, cu=None),
    dict(B=2, T=70, H=2, HV=4, K=16, V=8, cu=None),
    dict(B=1, T=150, H=2, HV=2, K=16, V=32, cu=[0, 10, 74, 75, 150]),
]


@pytest.mark.parametrize("case", CASES, ids=["T63", "T200-3heads", "grouped-v-heads", "packed"])
def test_chunked_gdn_matches_float64_recurrence(case):
    cu = None if case["cu"] is None else torch.tensor(case["cu"])
    inputs = gdn_inputs(*(case[n] for n in "B T H HV K V".split()))
    out = gdn_torch.chunk_gated_delta_rule(*inputs, cu_seqlens=cu)
    assert out.dtype == torch.float32
    ref = recurrent_gated_delta_rule_f64(*inputs, cu_seqlens=cu)
    assert rel(out, ref) < 1e-6
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad_out)
    ref_grads = torch.autograd.grad(ref, inputs, grad_out.double())
    for name, a, b in zip(["q", "k", "v", "g", "beta"], grads, ref_grads):
        assert rel(a, b) < 1e-6, name


def test_chunk_size_does_not_matter():
    inputs = gdn_inputs(1, 100, 2, 2, 8, 8)
    a = gdn_torch.chunk_gated_delta_rule(*inputs, chunk_size=16)
    b = gdn_torch.chunk_gated_delta_rule(*inputs, chunk_size=64)
    assert rel(a, b) < 1e-6


def test_packed_gdn_equals_documents_alone():
    lens = [5, 64, 1, 70, 60]
    q, k, v, g, beta = gdn_inputs(1, sum(lens), 2, 2, 16, 16)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    packed = gdn_torch.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu)
    alone = [gdn_torch.chunk_gated_delta_rule(*(x[:, s:e] for x in (q, k, v, g, beta)))
             for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())]
    assert rel(packed, torch.cat(alone, dim=1)) < 1e-6


def test_packed_conv_equals_documents_alone():
    lens = [3, 1, 20, 8]
    x, w = torch.randn(1, sum(lens), 12), torch.randn(12, 4)
    packing = ops.make_packing(torch.tensor(lens), 1, sum(lens), torch.device("cpu"))
    packed = conv_torch.causal_conv1d_silu(x, w, packing.positions)
    alone = torch.cat([conv_torch.causal_conv1d_silu(part, w, None) for part in x.split(lens, dim=1)], dim=1)
    assert rel(packed, alone) < 1e-6
    # and the unpacked path is an ordinary causal conv: the first output sees only the first input
    y = conv_torch.causal_conv1d_silu(x, w, None)
    assert torch.allclose(y[:, 0], F.silu(x[:, 0] * w[:, -1]), atol=1e-6)


def test_packed_attention_equals_documents_alone():
    lens = [7, 1, 24]
    T = sum(lens)
    q, k, v = torch.randn(1, T, 4, 8), torch.randn(1, T, 2, 8), torch.randn(1, T, 2, 8)
    packing = ops.make_packing(torch.tensor(lens), 1, T, torch.device("cpu"))
    packed = ops.causal_attention(q, k, v, packing, scale=0.3)
    parts = zip(*(x.split(lens, dim=1) for x in (q, k, v)))
    alone = torch.cat([ops.causal_attention(*p, None, scale=0.3) for p in parts], dim=1)
    assert rel(packed, alone) < 1e-6


@pytest.mark.parametrize("doc_lens, match", [
    (torch.tensor([10, 10]), "sums to 20"),
    (torch.tensor([5, 10, 17]), "crosses a row end"),
    (torch.tensor([0, 16, 16]), "positive"),
    (torch.tensor([[16, 16]]), "1-D"),
], ids=["sum", "cross-row", "zero", "2d"])
def test_bad_doc_lens_are_data_errors(doc_lens, match):
    with pytest.raises(DataError, match=match):
        ops.make_packing(doc_lens, 2, 16, torch.device("cpu"))


def test_cpu_uses_torch_kernels_and_never_imports_fla():
    assert ops.kernels_for(torch.device("cpu")) == "torch"
    assert "fla" not in sys.modules and "triton" not in sys.modules
    with ops.use_kernels("fla"), pytest.raises(EnvironmentSetupError, match="OLMO_TRAIN_KERNELS=torch"):
        ops.short_conv(torch.randn(1, 4, 3), torch.randn(3, 4), None)


@pytest.mark.parametrize("capability, triton, tilelang, ok", [
    ((9, 0), "3.6.0", False, False), ((9, 0), "3.6.0", True, True), ((9, 0), "3.7.1", False, True),
    ((10, 0), "3.6.0", False, True), ((8, 0), "3.5.1+git", False, True),
], ids=["hopper-old-triton", "hopper-tilelang", "hopper-new-triton", "blackwell", "ampere"])
def test_fla_shim_names_the_hopper_backward_fix(capability, triton, tilelang, ok):
    from olmo_train.model.ops.fla_shim import hopper_backward_problem

    problem = hopper_backward_problem(capability, triton, tilelang)
    assert (problem is None) == ok
    if not ok:
        assert "tilelang" in problem and "3.7.1" in problem
