"""olmo-export-hf: a DCP checkpoint (saved sharded at 2 ranks) -> transformers' OlmoHybridForCausalLM, same logits."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from olmo_train.checkpoint import CheckpointConfig, CheckpointManager, training_state
from olmo_train.checkpoint.export_hf import export_hf, main
from olmo_train.errors import CheckpointError
from olmo_train.model import OlmoHybrid, presets
from tests.helpers.distributed import run_distributed

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def tiny_model(seed: int = 3) -> OlmoHybrid:
    model = OlmoHybrid(presets.tiny())
    model.init_weights(seed)
    return model


def _save_sharded(rank: int, world_size: int, run_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = tiny_model()
    mesh = init_device_mesh("cpu", (world_size,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    mgr = CheckpointManager(CheckpointConfig(), run_dir, model_config=model.config)
    mgr.save(100, training_state(model))
    mgr.close()


@pytest.mark.distributed
def test_export_of_a_sharded_checkpoint_matches_our_logits_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    run_distributed(_save_sharded, 2, str(tmp_path / "run"))
    out = tmp_path / "hf"
    assert main([str(tmp_path / "run"), str(out)]) == 0  # a run dir: its newest good checkpoint
    assert json.loads((out / "config.json").read_text())["model_type"] == "olmo_hybrid"

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ours = tiny_model().eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 37), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ours(ids), hf_model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_export_refuses_non_empty_out_dir_and_missing_model_config(tmp_path):
    model = tiny_model()
    CheckpointManager(CheckpointConfig(async_save=False), tmp_path / "a").save(1, training_state(model))
    with pytest.raises(CheckpointError, match="no model_config"):
        export_hf(tmp_path / "a" / "checkpoints" / "step1", tmp_path / "out")
    mgr = CheckpointManager(CheckpointConfig(), tmp_path / "b", model_config=model.config)
    mgr.save(1, training_state(model))
    mgr.close()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep me")
    with pytest.raises(CheckpointError, match="not empty"):
        export_hf(tmp_path / "b", tmp_path / "out")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        export_hf(tmp_path / "nothing-here", tmp_path / "out2")


def test_console_script_reports_errors_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "olmo_train.checkpoint.export_hf", str(tmp_path), str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert done.returncode == 1
    assert "olmo-export-hf: error:" in done.stderr and "Traceback" not in done.stderr


def _save_deepspeed(rank: int, world_size: int, run_dir: str, stage: int) -> None:
    import os

    os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed

    model = tiny_model()
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": world_size,
              "gradient_clipping": 1.0, "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
              "steps_per_print": 2**31 - 1}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
                                      config=config)
    engine.backward(engine(torch.randint(0, 100, (1, 16))).float().square().mean())
    engine.step()
    mgr = CheckpointManager(CheckpointConfig(), run_dir, model_config=model.config)
    mgr.save_with(1, lambda d: engine.save_checkpoint(str(d), tag="ds", save_latest=False), train={})
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in engine.module.state_dict().items()},
                   str(Path(run_dir) / "trained.pt"))


@pytest.mark.distributed
@pytest.mark.slow
def test_export_of_a_deepspeed_zero2_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("deepspeed")
    run_distributed(_save_deepspeed, 2, str(tmp_path), 2)
    export_hf(tmp_path, tmp_path / "hf")
    ours = tiny_model().eval()
    ours.load_state_dict(torch.load(tmp_path / "trained.pt", weights_only=True))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, ours.config.vocab_size, (1, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(ids).logits, ours(ids), rtol=1e-4, atol=1e-4)
