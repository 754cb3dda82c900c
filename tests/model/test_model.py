import sys
import time

import torch
import torch.nn.functional as F

from olmo_train.model import OlmoHybrid, presets
from tests.model.conftest import rel, small_config


def test_packed_batch_equals_each_document_alone():
    """Attention, short conv and GDN state all stop at document boundaries (rows of two docs and of one)."""
    model = OlmoHybrid(small_config(rope_theta=10_000.0)).eval()
    T = 90
    ids = torch.randint(0, 96, (2, T))
    doc_lens = [1, 40, 49, T]  # row 0: three documents, row 1: one
    with torch.no_grad():
        packed = model(ids, doc_lens=torch.tensor(doc_lens))
        docs = ids.flatten().split(doc_lens)
        alone = torch.cat([model(d[None])[0] for d in docs]).view(2, T, -1)
    assert rel(packed, alone) < 1e-5
    assert rel(packed[1], model(ids[1:])[0]) < 1e-5  # a one-document row equals doc_lens=None


def test_packing_changes_the_result():
    model = OlmoHybrid(small_config()).eval()
    ids = torch.randint(0, 96, (1, 40))
    with torch.no_grad():
        assert rel(model(ids, doc_lens=torch.tensor([20, 20])), model(ids)) > 1e-3


def test_forward_backward_and_hidden_states():
    model = OlmoHybrid(small_config())
    ids = torch.randint(0, 96, (2, 33))
    h = model.hidden_states(ids)
    assert h.shape == (2, 33, 64)
    logits = model(ids)
    assert torch.allclose(logits, model.lm_head(h), atol=1e-6)
    F.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_bf16_parameters_give_bf16_logits():
    model = OlmoHybrid(small_config()).to(torch.bfloat16)
    logits = model(torch.randint(0, 96, (1, 20)), doc_lens=torch.tensor([5, 15]))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_tiny_training_step_is_quick_on_cpu_and_needs_no_fla():
    model = OlmoHybrid(presets.tiny())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 8192, (4, 256))
    timings = []  # CPU seconds of this process: robust to other jobs sharing the machine
    for _ in range(2):
        t0 = time.process_time()
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        timings.append(time.process_time() - t0)
    assert min(timings) < 2.0  # ~0.3 CPU-s (2 threads) per step when measured; generous for slow CI cores
    assert "fla" not in sys.modules and "triton" not in sys.modules


def test_blocks_compile_with_the_kernel_call_as_the_only_break():
    """What the trainer's per-block torch.compile sees: same outputs, graph breaks only at the GDN kernel call."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = OlmoHybrid(small_config())
    ids, doc_lens = torch.randint(0, 96, (2, 40)), torch.tensor([30, 10, 40])
    expected = model(ids, doc_lens=doc_lens)
    for block in model.blocks:
        block.compile(backend="aot_eager")
    out = model(ids, doc_lens=doc_lens)
    out.sum().backward()
    assert torch.allclose(out, expected, atol=1e-6)
    assert counters["graph_break"] and all("gated_delta_rule" in reason for reason in counters["graph_break"])
    torch._dynamo.reset()
