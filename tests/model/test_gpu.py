"""fla kernels on CUDA against our PyTorch kernels (skipped without a GPU; see benchmarks/model_gpu_check.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from olmo_train.model import OlmoHybrid, ops
from olmo_train.model.ops.gdn_reference import recurrent_gated_delta_rule_f64
from tests.model.conftest import rel, small_config

pytestmark = pytest.mark.gpu


def gpu_config():
    return small_config(vocab_size=512, d_model=256, attn_n_heads=2, attn_head_dim=128, gdn_n_heads=4,
                        gdn_head_k_dim=64, gdn_head_v_dim=128, mlp_hidden=512)


def run(model, ids, doc_lens, kernels):
    model.zero_grad(set_to_none=True)
    with ops.use_kernels(kernels):
        logits = model(ids, doc_lens=doc_lens)
        F.cross_entropy(logits.float().flatten(0, 1), ids.flatten()).backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters()])
    return logits.float().detach(), grads


@pytest.mark.parametrize("doc_lens", [None, [100, 205, 1, 306]], ids=["rows", "packed"])
def test_fla_bf16_is_as_close_to_fp32_as_torch_bf16(doc_lens):
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # an fp32 reference, not tf32
    try:
        _compare_kernels(doc_lens)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _compare_kernels(doc_lens):
    with torch.device("cuda"):
        ref_model = OlmoHybrid(gpu_config())
    bf16 = copy.deepcopy(ref_model).to(torch.bfloat16)
    ids = torch.randint(0, 512, (2, 306), device="cuda")
    docs = None if doc_lens is None else torch.tensor(doc_lens)
    ref = run(ref_model, ids, docs, "torch")
    fla, torch_bf16 = run(bf16, ids, docs, "fla"), run(bf16, ids, docs, "torch")
    for i, what in enumerate(("logits", "grads")):
        assert rel(fla[i], ref[i]) < 2 * rel(torch_bf16[i], ref[i]) + 2e-3, what


def test_fla_gated_delta_rule_matches_float64_recurrence():
    gen = torch.Generator().manual_seed(0)
    B, T, H, K, V = 1, 300, 2, 64, 128
    q, k = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    g, beta = -F.softplus(torch.randn(B, T, H, generator=gen)), 2 * torch.rand(B, T, H, generator=gen)
    cu = torch.tensor([0, 37, 200, 300])
    packing = ops.Packing(cu_seqlens=cu.cuda(), cu_seqlens_cpu=cu, max_len=163, positions=None, doc_ids=None)
    with ops.use_kernels("fla"):
        out = ops.gated_delta_rule(*(x.cuda().bfloat16() for x in (q, k, v)), g.cuda(), beta.cuda().bfloat16(),
                                   packing)
    ref = recurrent_gated_delta_rule_f64(q, k, v, g, beta, cu_seqlens=cu)
    assert rel(out.cpu(), ref) < 2e-2
