"""CheckpointManager in one process (no process group): round trip, commit protocol, retention, resume."""

import json
import random

import numpy as np
import pytest
import torch

from olmo_train.checkpoint import CheckpointConfig, CheckpointManager, checkpoint_kind, training_state, verify
from olmo_train.checkpoint.layout import steps_to_delete, Entry
from olmo_train.errors import CheckpointError, ConfigError
from tests.checkpoint.conftest import TinyNet, fresh, same_weights, save_steps, trained

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


@pytest.mark.parametrize("async_save", [True, False], ids=["async", "sync"])
def test_round_trip_restores_model_optimizer_train_and_rng(tmp_path, async_save):
    model, opt = trained()
    mgr = CheckpointManager(CheckpointConfig(async_save=async_save), tmp_path, model_config={"width": 8})
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    mgr.save(5, training_state(model, opt, {"tokens": 640, "wandb_id": "abc"}))
    after_save = (torch.rand(3), np.random.rand(3), random.random())
    mgr.wait()
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "5"

    model2, opt2 = fresh()
    assert not same_weights(model, model2)
    torch.manual_seed(99)
    train = mgr.load(mgr.resume_path(), training_state(model2, opt2))
    assert train == {"step": 5, "tokens": 640, "wandb_id": "abc"}
    assert same_weights(model, model2)
    for group in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(opt.state_dict()["state"][0][group], opt2.state_dict()["state"][0][group])
    assert opt2.param_groups[0]["lr"] == 1e-2
    after_load = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(after_save[0], after_load[0])
    assert np.array_equal(after_save[1], after_load[1]) and after_save[2] == after_load[2]


def test_async_save_is_isolated_from_later_updates(tmp_path):
    """The staged copy is what gets written, even when training changes the weights right after save()."""
    model, opt = trained()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    mgr = CheckpointManager(CheckpointConfig(async_save=True), tmp_path)
    mgr.save(1, training_state(model, opt))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    mgr.wait()
    model2, _ = fresh()
    mgr.load(tmp_path / "checkpoints" / "step1", {"model": training_state(model2)["model"]})
    assert all(torch.equal(expected[k], v) for k, v in model2.state_dict().items())


def test_manifest_lists_files_config_and_shapes_but_no_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "s3cr3t-key-value")
    model, opt = trained()
    mgr = CheckpointManager(CheckpointConfig(), tmp_path, model_config={"width": 8, "hub_token": "hf_abc"})
    mgr.save(3, training_state(model, opt, {"wandb_api_key": "s3cr3t-key-value", "note": "s3cr3t-key-value"}))
    mgr.close()
    path = tmp_path / "checkpoints" / "step3"
    manifest = verify(path)
    assert manifest["kind"] == "dcp" and manifest["step"] == 3 and manifest["world_size"] == 1
    assert manifest["model_config"] == {"width": 8, "hub_token": "<redacted>"}
    assert manifest["tensors"]["model.layers.0.weight"] == {"shape": [8, 8], "dtype": "float32"}
    assert {".metadata", "train.json", "rng/rank00000.pt"} <= set(manifest["files"])
    for file in path.rglob("*"):
        if file.is_file():
            assert b"s3cr3t" not in file.read_bytes() and b"hf_abc" not in file.read_bytes(), file


def test_retention_keeps_last_k_every_mth_and_drops_ephemeral(tmp_path):
    save_steps(tmp_path, [10, 20, 25, 30, 35, 40, 50], ephemeral_steps={25, 35}, interval=10, keep=2,
               keep_every=20, ephemeral_interval=5)
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == ["latest", "step20", "step40", "step50"]


def test_newest_checkpoint_survives_even_if_ephemeral():
    entries = [Entry(10, False), Entry(20, False), Entry(25, True)]
    assert steps_to_delete(entries, keep=1, keep_every=0) == [10]
    assert steps_to_delete([Entry(5, True)], keep=1, keep_every=0) == []


def test_retention_never_counts_or_deletes_corrupt_checkpoints(tmp_path):
    """With keep=1 and the two newest corrupt, the older good one must survive the next save's retention."""
    save_steps(tmp_path, [10, 20, 30], interval=10, keep=3)
    ckpts = tmp_path / "checkpoints"
    (ckpts / "step20" / "train.json").write_text("{}")
    (ckpts / "step30" / ".metadata").unlink()
    model, opt = trained()
    mgr = CheckpointManager(CheckpointConfig(interval=10, keep=1), tmp_path)
    assert mgr.resume_path() == ckpts / "step10"
    mgr.save(40, training_state(model, opt))
    mgr.close()
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step")) == ["step20", "step30", "step40"]


@pytest.mark.parametrize("damage", ["truncate_shard", "delete_metadata", "bad_manifest", "edit_train_json",
                                    "no_manifest"])
def test_resume_skips_a_corrupt_newest_checkpoint_and_says_so(tmp_path, ckpt_log, damage):
    save_steps(tmp_path, [10, 20], interval=10, keep=5)
    bad = tmp_path / "checkpoints" / "step20"
    if damage == "truncate_shard":
        shard = next(bad.glob("*.distcp"))
        shard.write_bytes(shard.read_bytes()[:100])
    elif damage == "delete_metadata":
        (bad / ".metadata").unlink()
    elif damage == "bad_manifest":
        (bad / "manifest.json").write_text("{not json")
    elif damage == "edit_train_json":
        (bad / "train.json").write_text(json.dumps({"step": 20, "tokens": 1}).ljust(29))
    else:
        (bad / "manifest.json").unlink()
    mgr = CheckpointManager(CheckpointConfig(), tmp_path)
    assert mgr.resume_path() == tmp_path / "checkpoints" / "step10"
    assert bad.exists(), "a corrupt checkpoint is kept for inspection"
    if damage != "no_manifest":  # without a manifest it was never committed: not a candidate at all
        text = ckpt_log.text
        assert "skipping corrupt checkpoint" in text and str(bad) in text
        assert f"using checkpoint {tmp_path / 'checkpoints' / 'step10'} instead" in text
        with pytest.raises(CheckpointError, match="corrupt|never committed"):
            mgr.load(bad, training_state(fresh()[0]))


def test_no_checkpoint_and_no_load_path_means_none(tmp_path):
    assert CheckpointManager(CheckpointConfig(), tmp_path).resume_path() is None


def test_load_path_falls_back_to_another_runs_newest_good_checkpoint(tmp_path, ckpt_log):
    save_steps(tmp_path / "other", [10, 20], interval=10)
    for load_path in (tmp_path / "other", tmp_path / "other" / "checkpoints"):
        mgr = CheckpointManager(CheckpointConfig(load_path=str(load_path)), tmp_path / "mine")
        assert mgr.resume_path() == tmp_path / "other" / "checkpoints" / "step20"
    assert "starting from checkpoint.load_path" in ckpt_log.text
    save_steps(tmp_path / "mine", [5])  # once this run has its own checkpoint, load_path is ignored
    assert mgr.resume_path() == tmp_path / "mine" / "checkpoints" / "step5"


def test_load_path_to_hf_dir_is_reported_as_hf(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "olmo_hybrid"}))
    mgr = CheckpointManager(CheckpointConfig(load_path=str(hf)), tmp_path / "run")
    path = mgr.resume_path()
    assert path == hf and checkpoint_kind(path) == "hf"
    with pytest.raises(CheckpointError, match="load_hf"):
        mgr.load(path, training_state(fresh()[0]))
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="'llama'"):
        mgr.resume_path()
    with pytest.raises(CheckpointError, match="does not exist"):
        CheckpointManager(CheckpointConfig(load_path=str(tmp_path / "nope")), tmp_path / "run").resume_path()


def test_other_model_shape_is_named_with_both_shapes(tmp_path):
    model, opt = trained(width=8)
    mgr = CheckpointManager(CheckpointConfig(), tmp_path, model_config={"width": 8, "layers": 2})
    mgr.save(1, training_state(model, opt))
    mgr.close()
    wide = TinyNet(width=16)
    mgr16 = CheckpointManager(CheckpointConfig(), tmp_path, model_config={"width": 16, "layers": 2})
    with pytest.raises(CheckpointError) as err:
        mgr16.load(mgr16.resume_path(), training_state(wide))
    message = str(err.value)
    assert "'model.layers.0.weight' has shape [8, 8] in the checkpoint and [16, 16] here" in message
    assert "width 8 (checkpoint) vs 16 (here)" in message


def test_save_with_commits_any_writer_and_load_with_reads_it(tmp_path):
    mgr = CheckpointManager(CheckpointConfig(), tmp_path)
    mgr.save_with(7, lambda d: (d / "engine").mkdir() or (d / "engine" / "weights.bin").write_bytes(b"w" * 64),
                  train={"tokens": 3})
    path = mgr.resume_path()
    assert path.name == "step7" and checkpoint_kind(path) == "custom"
    seen = []
    assert mgr.load_with(path, seen.append) == {"step": 7, "tokens": 3} and seen == [path]
    with pytest.raises(CheckpointError, match="load_with"):
        mgr.load(path, training_state(fresh()[0]))


def test_failed_writer_leaves_no_temp_dir_and_keeps_previous(tmp_path):
    mgr = CheckpointManager(CheckpointConfig(), tmp_path)
    mgr.save_with(1, lambda d: (d / "a").write_bytes(b"1"))

    def broken(d):
        (d / "a").write_bytes(b"half")
        raise RuntimeError("engine exploded")

    with pytest.raises(CheckpointError, match="engine exploded.*previous checkpoint \\(step1\\)"):
        mgr.save_with(2, broken)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step1"]


def test_leftover_temp_dirs_of_a_crashed_attempt_are_removed(tmp_path):
    leftover = tmp_path / "checkpoints" / ".tmp-step40"
    leftover.mkdir(parents=True)
    (leftover / "__0_0.distcp").write_bytes(b"partial")
    CheckpointManager(CheckpointConfig(), tmp_path)
    assert not leftover.exists()


def test_saving_an_already_committed_step_is_a_no_op(tmp_path):
    save_steps(tmp_path, [10])
    before = (tmp_path / "checkpoints" / "step10" / "manifest.json").read_text()
    save_steps(tmp_path, [10])
    assert (tmp_path / "checkpoints" / "step10" / "manifest.json").read_text() == before


def test_train_state_must_be_json(tmp_path):
    mgr = CheckpointManager(CheckpointConfig(), tmp_path)
    with pytest.raises(CheckpointError, match="JSON-able.*item"):
        mgr.save(1, {"model": TinyNet().state_dict(), "train": {"loss": torch.tensor(1.0)}})


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"keep": 0}, "keep"), ({"interval": -1}, "interval"), ({"interval": 100, "ephemeral_interval": 100},
                                                             "ephemeral_interval"),
    ({"interval": 100, "keep_every": 250}, "keep_every"), ({"write_threads": 0}, "write_threads"),
    ({"load_path": ""}, "load_path"), ({"collective_timeout_s": 0}, "collective_timeout_s")],
    ids=["keep", "interval", "ephemeral", "keep_every", "threads", "load", "timeout"])
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=f"checkpoint.{field}"):
        CheckpointConfig(**kwargs)


def test_config_save_kind():
    cfg = CheckpointConfig(interval=100, ephemeral_interval=25)
    assert [cfg.save_kind(s) for s in (0, 25, 50, 100, 101)] == [None, "ephemeral", "ephemeral", "permanent", None]
    assert CheckpointConfig(interval=0).save_kind(1000) is None


def test_stager_reuses_buffers_and_carries_new_values():
    from olmo_train.checkpoint.staging import CpuStager

    weight = torch.ones(4, 4)
    stager = CpuStager(pin_memory=False)
    first = stager.stage({"w": weight, "group": {"lr": 0.1, "betas": (0.9, 0.95)}})
    assert first["w"].data_ptr() != weight.data_ptr() and torch.equal(first["w"], weight)
    weight.add_(1.0)
    second = stager.stage({"w": weight, "group": {"lr": 0.05, "betas": (0.9, 0.95)}})
    assert second["w"].data_ptr() == first["w"].data_ptr(), "buffers are kept between saves"
    assert torch.equal(second["w"], weight) and second["group"]["lr"] == 0.05
    third = stager.stage({"w": torch.zeros(2), "group": {"lr": 0.05, "betas": (0.9, 0.95)}})
    assert third["w"].shape == (2,), "a changed layout gets new buffers"
