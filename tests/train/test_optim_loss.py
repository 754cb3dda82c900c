import math

import pytest
import torch
import torch.nn.functional as F

from olmo_train.model import OlmoHybrid, presets
from olmo_train.train.losses import IGNORE_INDEX, count_tokens, lm_loss_sums
from olmo_train.train.metrics import MetricsTracker, NonFiniteLossError
from olmo_train.train.optim import OptimizerConfig, cosine_lr, param_groups


@pytest.fixture(scope="module")
def tiny_model():
    with torch.device("meta"):
        return OlmoHybrid(presets.tiny())


def group_names(model, cfg):
    ids = {id(p): n for n, p in model.named_parameters()}
    return [{ids[id(p)] for p in g["params"]} for g in param_groups(model, cfg)]


def test_no_weight_decay_on_the_embedding_only_by_default(tiny_model):
    decay, no_decay = group_names(tiny_model, OptimizerConfig())
    assert no_decay == {"embed.weight"}
    assert "lm_head.weight" in decay and any("norm" in n for n in decay)
    assert len(decay) + 1 == len(list(tiny_model.parameters()))


def test_olmo1_style_excludes_norms_too(tiny_model):
    decay, no_decay = group_names(tiny_model, OptimizerConfig(decay_norms_and_biases=False))
    assert "embed.weight" in no_decay and "norm.weight" in no_decay
    assert all(tiny_model.get_parameter(n).ndim >= 2 for n in decay)
    decay, no_decay = group_names(tiny_model, OptimizerConfig(decay_embeddings=True))
    assert "embed.weight" in decay and not no_decay


def test_cosine_schedule():
    kw = dict(peak=1.0, warmup=10, total=110, final_ratio=0.1)
    assert cosine_lr(0, **kw) == pytest.approx(0.1) and cosine_lr(9, **kw) == pytest.approx(1.0)
    assert cosine_lr(60, **kw) == pytest.approx(0.55)
    assert cosine_lr(110, **kw) == pytest.approx(0.1) and cosine_lr(500, **kw) == pytest.approx(0.1)
    lrs = [cosine_lr(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_loss_sums_match_torch_and_ignore_labels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 11, generator=g) * 3
    labels = torch.randint(0, 11, (2, 7), generator=g)
    labels[0, 3] = labels[1, 6] = IGNORE_INDEX
    ce, z = lm_loss_sums(logits, labels)
    n = count_tokens(labels)
    assert n.item() == 12
    ref = F.cross_entropy(logits.view(-1, 11), labels.view(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    torch.testing.assert_close(ce, ref)
    lse = torch.logsumexp(logits, -1)
    torch.testing.assert_close(z, (lse.square() * (labels != IGNORE_INDEX)).sum())


def test_loss_sums_in_float32_from_bf16():
    logits = torch.randn(1, 5, 9).bfloat16()
    ce, z = lm_loss_sums(logits, torch.zeros(1, 5, dtype=torch.long))
    assert ce.dtype == z.dtype == torch.float32


def tracker():
    return MetricsTracker(world_size=1, flops_per_token=6e6, peak_flops=1e12, z_loss_weight=1e-4,
                          device=torch.device("cpu"))


def test_tracker_gives_one_record_per_step():
    t = tracker()
    for step in (1, 2, 3):
        t.record(step, ce_sum=torch.tensor(20.0 * step), z_sum=torch.tensor(100.0), n_tokens=torch.tensor(10),
                 grad_norm=torch.tensor(0.5), lr=1e-3, step_time_s=0.5, data_wait_s=0.1, batch_tokens=1000,
                 tokens=1000 * step)
    records = t.flush()
    assert [r["step"] for r in records] == [1, 2, 3] and t.flush() == []
    assert records[1]["loss"] == pytest.approx(4.0 + 1e-4 * 10.0) and records[2]["tokens"] == 3000
    assert records[0]["tokens_per_s"] == pytest.approx(2000.0)
    assert records[0]["mfu"] == pytest.approx(2000.0 * 6e6 / 1e12)
    assert records[0]["data_wait_frac"] == pytest.approx(0.2)


def test_tracker_fails_fast_on_a_non_finite_loss():
    t = tracker()
    t.record(5, ce_sum=torch.tensor(math.nan), z_sum=torch.tensor(1.0), n_tokens=torch.tensor(10),
             grad_norm=1.0, lr=1e-3, step_time_s=0.1, data_wait_s=0.0, batch_tokens=10, tokens=10)
    with pytest.raises(NonFiniteLossError, match="step 5"):
        t.flush()


def adamw_run(impl: str, steps: int = 4) -> list[torch.Tensor]:
    from olmo_train.train.optim import build_adamw

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(33, 17)), torch.nn.Parameter(torch.randn(17))]
    cfg = OptimizerConfig(impl=impl, lr=1e-2)
    opt = build_adamw([{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "weight_decay": 0.0}],
                      cfg)
    kind = "fused" if opt.defaults["fused"] else "foreach" if opt.defaults["foreach"] else "for-loop"
    assert kind == ("foreach" if impl == "auto" else impl)  # auto is fused only for CUDA parameters
    for i in range(steps):
        for p in params:
            p.grad = torch.sin(p.detach() * (i + 1))
        opt.step()
    return [p.detach() for p in params]


def test_adamw_fused_and_foreach_agree_and_auto_is_foreach_off_cuda():
    foreach, fused, auto = adamw_run("foreach"), adamw_run("fused"), adamw_run("auto")
    for a, b, c in zip(foreach, fused, auto):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)  # they differ in the last bits only
        assert torch.equal(c, a)


def test_adamw_impl_is_validated():
    from olmo_train.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.optimizer.impl='fast'; valid: auto, fused, foreach"):
        OptimizerConfig(impl="fast")
