"""A full disk during a save, and checkpoints that try to run code on load."""

import errno
import pickle
import subprocess
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemWriter

from olmo_train.checkpoint import CheckpointConfig, CheckpointManager, training_state
from olmo_train.checkpoint import manager as manager_module
from olmo_train.checkpoint.safe_reader import read_dcp_metadata
from olmo_train.errors import CheckpointError
from tests.checkpoint.conftest import TinyNet, fresh, same_weights, save_steps, trained

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


class FullDiskWriter(FileSystemWriter):
    """Writes part of a shard, then fails the way a full disk does."""

    def write_data(self, plan, planner):
        (Path(self.path) / "__0_0.distcp").write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")


def assert_previous_intact(run_dir: Path, model: torch.nn.Module) -> None:
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step10"], "temp dir must be gone"
    assert (ckpts / "latest").read_text().strip() == "10"
    mgr = CheckpointManager(CheckpointConfig(), run_dir)
    assert mgr.resume_path() == ckpts / "step10"
    restored = TinyNet(model.layers[0].in_features)
    mgr.load(ckpts / "step10", {"model": training_state(restored)["model"]})
    assert same_weights(model, restored)


@pytest.mark.parametrize("async_save", [True, False], ids=["async", "sync"])
def test_full_disk_midway_keeps_previous_checkpoint_and_says_why(tmp_path, monkeypatch, async_save):
    model, opt = trained()
    mgr = CheckpointManager(CheckpointConfig(async_save=async_save), tmp_path)
    mgr.save(10, training_state(model, opt))
    mgr.wait()
    monkeypatch.setattr(manager_module, "FileSystemWriter", FullDiskWriter)
    with pytest.raises(CheckpointError) as err:
        mgr.save(20, training_state(model, opt))
        mgr.wait()
    message = str(err.value)
    assert "step20" in message and "no space left on device" in message
    assert "previous checkpoint (step10)" in message and "free space" in message
    assert_previous_intact(tmp_path, model)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_really_full_tmpfs_keeps_previous_checkpoint(tiny_tmpfs):
    """A 256 KiB file system: the small model's checkpoint fits, one of a 128x128 model does not."""
    small, _ = trained(width=8)
    mgr = CheckpointManager(CheckpointConfig(async_save=True), tiny_tmpfs)
    mgr.save(10, training_state(small))
    mgr.wait()
    big = TinyNet(width=256)
    with pytest.raises(CheckpointError, match="no space left on device"):
        mgr.save(20, training_state(big))
        mgr.wait()
    assert_previous_intact(tiny_tmpfs, small)


MARKER = Path("/tmp/olmo-train-checkpoint-test-pwned")


class Boom:
    """Unpickling this runs code: it creates MARKER."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


def test_metadata_that_builds_other_objects_is_refused(tmp_path):
    save_steps(tmp_path, [1])
    path = tmp_path / "checkpoints" / "step1"
    (path / ".metadata").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        read_dcp_metadata(path)
    (path / ".metadata").write_bytes(pickle.dumps(__import__("os").system))
    with pytest.raises(CheckpointError, match="'posix.system'"):
        read_dcp_metadata(path)


def test_load_refuses_a_tampered_shard_object(tmp_path):
    """Non-tensor entries are read with torch.load(weights_only=True): a pickled callable never runs."""
    model, opt = trained()
    MARKER.unlink(missing_ok=True)
    mgr = CheckpointManager(CheckpointConfig(async_save=False), tmp_path)  # no staging copy: Boom is pickled
    mgr.save(1, {"model": model.state_dict(), "extra": {"obj": Boom()}})
    mgr.close()
    path = tmp_path / "checkpoints" / "step1"
    target, _ = fresh()
    with pytest.raises(CheckpointError, match="extra.obj.*would need to run code"):
        mgr.load(path, {"model": target.state_dict(), "extra": {"obj": 0}})
    assert not MARKER.exists()


def _one_rank_runs_out_of_space(rank: int, world_size: int, run_dir: str) -> None:
    model, opt = trained()
    mgr = CheckpointManager(CheckpointConfig(async_save=True), run_dir)
    mgr.save(10, training_state(model, opt))
    mgr.wait()
    if rank == 1:
        manager_module.FileSystemWriter = FullDiskWriter
    mgr.save(20, training_state(model, opt))
    try:
        mgr.wait()
    except CheckpointError as e:
        assert "rank 1: no space left on device" in str(e) and "previous checkpoint (step10)" in str(e), str(e)
    else:
        raise AssertionError(f"rank {rank}: the failed save was not reported")
    manager_module.FileSystemWriter = FileSystemWriter
    mgr.save(30, training_state(model, opt))  # the group is still usable: no rank hangs
    mgr.wait()
    if rank == 1:
        manager_module.resolve = _out_of_memory
    try:
        mgr.save(40, training_state(model, opt))  # fails while staging on rank 1, before anything is written
    except CheckpointError as e:
        assert "rank 1: MemoryError: staging buffers" in str(e), str(e)
    else:
        raise AssertionError(f"rank {rank}: the failed staging was not reported")
    mgr.close()


def _out_of_memory(state):
    raise MemoryError("staging buffers")


@pytest.mark.distributed
def test_a_full_disk_on_one_rank_fails_the_save_on_every_rank(tmp_path):
    from tests.helpers.distributed import run_distributed

    run_distributed(_one_rank_runs_out_of_space, 2, str(tmp_path))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step10", "step30"]
