import math

import pytest
import torch

from olmo_train.model import OlmoHybrid
from olmo_train.model.common import init as init_lib
from tests.helpers.distributed import run_distributed
from tests.model.conftest import small_config


def full_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights_other_seed_other_weights():
    cfg = small_config()
    a, b = OlmoHybrid(cfg), OlmoHybrid(cfg)
    a.init_weights(7)
    b.init_weights(7)
    assert all(torch.equal(x, y) for x, y in zip(full_state(a).values(), full_state(b).values()))
    b.init_weights(8)
    assert not torch.equal(a.lm_head.weight, b.lm_head.weight)


def test_meta_build_then_init_equals_direct_build():
    cfg = small_config()
    direct = OlmoHybrid(cfg)
    direct.init_weights(3)
    with torch.device("meta"):
        lazy = OlmoHybrid(cfg)
    lazy.to_empty(device="cpu")
    lazy.init_weights(3)
    for (name, x), y in zip(full_state(direct).items(), full_state(lazy).values()):
        assert torch.equal(x, y), name


def test_weights_depend_on_name_not_on_construction_order():
    """Parameters of the same name and shape get the same values in differently-shaped models."""
    small, deep = OlmoHybrid(small_config()), OlmoHybrid(small_config(n_layers=8))
    small.init_weights(1)
    deep.init_weights(1)
    for name, value in full_state(small).items():
        assert torch.equal(value, deep.state_dict()[name]), name


def test_rows_are_drawn_independently_of_slicing():
    """Any row range equals the same rows of the full tensor (what each FSDP shard draws)."""
    spec = init_lib.InitSpec(kind="normal", std=0.02)
    shape = (3000, 700)  # several generator blocks of rows
    full = init_lib.full_rows(spec, 5, "w", shape, 0, shape[0])
    for start, stop in [(0, 1), (1, 1499), (1498, 3000), (2999, 3000)]:
        assert torch.equal(init_lib.full_rows(spec, 5, "w", shape, start, stop), full[start:stop])


def test_distributions():
    cfg = small_config(d_model=256, attn_n_heads=4, gdn_n_heads=64, gdn_head_k_dim=8, gdn_head_v_dim=8)
    model = OlmoHybrid(cfg)
    w = model.blocks[0].mlp.up_proj.weight
    assert abs(w.std().item() - 0.02 * 0.9866) < 1e-3 and w.abs().max() <= 0.06 + 1e-7  # N(0, .02) cut at 3 std
    gdn = model.blocks[0].gdn
    A = gdn.A_log.exp()
    assert 0 < A.min() and A.max() < 16
    dt = torch.nn.functional.softplus(gdn.dt_bias)
    assert (dt >= 1e-3 - 1e-7).all() and (dt <= 0.1 + 1e-6).all()
    bound = 1 / math.sqrt(4)
    assert gdn.conv1d.weight.abs().max() <= bound
    assert torch.equal(model.blocks[0].mlp_norm.weight, torch.ones(256))


def test_wrapper_prefixes_do_not_change_names():
    assert init_lib.canonical_name("blocks.0._checkpoint_wrapped_module.mlp.up_proj.weight") == \
        "blocks.0.mlp.up_proj.weight"
    assert init_lib.canonical_name("_orig_mod.embed.weight") == "embed.weight"


def _fsdp_init_worker(rank: int, world_size: int, seed: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # odd head counts and a 3-layer-multiple so several parameters split unevenly over 2 ranks
    cfg = small_config(vocab_size=97, gdn_n_heads=3, gdn_head_k_dim=8, gdn_head_v_dim=16)
    mesh = init_device_mesh("cpu", (world_size,))
    with torch.device("meta"):
        model = OlmoHybrid(cfg)
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")
    model.init_weights(seed)
    reference = OlmoHybrid(cfg)
    reference.init_weights(seed)
    ref_state = reference.state_dict()
    for name, param in model.named_parameters():
        assert type(param.data).__name__ == "DTensor", name
        full = param.full_tensor()
        assert torch.equal(full, ref_state[name]), f"rank {rank}: {name}"
    # and the sharded model computes what the whole one does, packed documents included
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(rank))
    doc_lens = torch.tensor([5, 19, 24])
    with torch.no_grad():
        assert torch.allclose(model(ids, doc_lens=doc_lens), reference(ids, doc_lens=doc_lens), atol=1e-5)


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp2_sharded_init_and_forward_equal_unsharded():
    run_distributed(_fsdp_init_worker, 2, 11)
