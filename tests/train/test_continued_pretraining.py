"""checkpoint.load_path = a transformers `olmo_hybrid` dir: training starts at step 0 from its weights."""

import pytest
import torch

from olmo_train.model import OlmoHybrid, hf, presets
from tests.train import launch

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("nproc,backend", [(0, "single"), (2, "deepspeed")], ids=["single", "zero3-2ranks"])
def test_hf_weights_start_a_new_run(nproc, backend, tmp_path):
    model = OlmoHybrid(presets.tiny())
    with torch.no_grad():
        model.init_weights(123)
    hf.save_hf(model, tmp_path / "hf")
    # seed 123 from scratch and seed 0 from the HF copy of seed 123's weights see the same weights; the data order
    # is pinned with data.seed_offset so that both read the same batches.
    launch.run(tmp_path / "scratch", 0, "seed=123", "data.seed_offset=0", "trainer.max_steps=2")
    launch.run(tmp_path / "from-hf", nproc, f"distributed={backend}", "seed=0", "data.seed_offset=123",
               "trainer.max_steps=2",
               f"checkpoint.load_path={tmp_path / 'hf'}")
    scratch, from_hf = launch.losses(tmp_path / "scratch"), launch.losses(tmp_path / "from-hf")
    assert sorted(from_hf) == [1, 2]
    assert from_hf[1] == pytest.approx(scratch[1], rel=1e-6) and from_hf[2] == pytest.approx(scratch[2], rel=1e-5)


def test_hf_weights_of_another_model_are_refused(tmp_path):
    model = OlmoHybrid(presets.tiny().replace(d_model=64, gdn_head_k_dim=16, gdn_head_v_dim=32, mlp_hidden=192))
    with torch.no_grad():
        model.init_weights(0)
    hf.save_hf(model, tmp_path / "hf")
    out = launch.run(tmp_path / "run", 0, f"checkpoint.load_path={tmp_path / 'hf'}", expect=1)
    assert "another model" in out and "d_model" in out

