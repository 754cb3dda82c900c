"""End to end with 2 gloo processes: SIGKILL + restart is bit-exact (fsdp2, deepspeed); fsdp2 == ZeRO-3 in fp32;
a world-size-2 checkpoint continues at world size 1 and 4 with other micro-batch sizes and cluster profiles."""

import json
import random
import signal

import pytest

from tests.train import launch

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

# Measured (benchmarks/RESULTS.md, Training): continuing a 2-rank float32 checkpoint at world size 1 or 4 with
# another micro-batch size changes only the order of float32 sums; max relative loss difference over the 4
# continued steps 6.3e-8. Tolerance: ~15x that.
MIGRATION_RTOL = 1e-6
# fsdp2 vs DeepSpeed ZeRO-3: the same math, but DeepSpeed computes the gradient norm (hence the clip factor) in
# float64 and another order; measured max relative loss difference over 10 steps 3.3e-7. Tolerance: ~15x that.
BACKEND_RTOL = 5e-6
# DeepSpeed at another world size goes through its universal checkpoint, as exact as fsdp2 (measured ZeRO-2
# 4.8e-12, ZeRO-3 1.2e-7) once the backend works around two DeepSpeed 0.19.8 ZeRO-3 load bugs (group 0's
# hyper-parameters copied into every group; one shared Adam `step` tensor, which drifted losses by 6.6e-4).


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted 10-step runs at world size 2, one per backend (built on first use)."""
    runs = {}

    def get(backend: str, *extra: str):
        key = (backend, *extra)
        if key not in runs:
            run_dir = tmp_path_factory.mktemp(f"ref-{backend}")
            launch.run(run_dir, 2, f"distributed={backend}", *extra)
            runs[key] = run_dir
        return runs[key]

    return get


@pytest.mark.parametrize("backend", ["fsdp2", "deepspeed"])
def test_sigkill_and_restart_is_bit_exact(backend, reference, tmp_path):
    ref = reference(backend)
    kill_step = random.Random().randint(4, 9)  # after the first checkpoint (step 3), before the end
    proc = launch.start(tmp_path, 2, f"distributed={backend}", "checkpoint.async_save=true")
    launch.signal_at_step(proc, tmp_path, kill_step, signal.SIGKILL, group=True)
    proc.wait()
    assert max(launch.losses(tmp_path)) >= kill_step
    launch.run(tmp_path, 2, f"distributed={backend}", "checkpoint.async_save=true")

    steps = [r["step"] for r in launch.records(tmp_path)]
    assert steps == list(range(1, 11)), f"one record per step expected, got {steps}"
    got, want = launch.records(tmp_path), launch.records(ref)
    assert [(r["loss"], r["grad_norm"]) for r in got] == [(r["loss"], r["grad_norm"]) for r in want], (
        f"killed at step {kill_step}")
    events = [json.loads(line)["event"] for line in (tmp_path / "goodput/events.jsonl").read_text().splitlines()]
    assert events.count("attempt_start") == 2 and events.count("checkpoint_loaded") == 1


def test_fsdp2_and_deepspeed_zero3_agree_in_float32(reference):
    fsdp2, ds = launch.losses(reference("fsdp2")), launch.losses(reference("deepspeed"))
    assert sorted(fsdp2) == sorted(ds) == list(range(1, 11))
    worst = max(abs(fsdp2[s] - ds[s]) / abs(fsdp2[s]) for s in fsdp2)
    print(f"fsdp2 vs zero3: max relative loss difference {worst:.3g}")
    assert worst <= BACKEND_RTOL
    assert fsdp2[10] < fsdp2[1] - 0.1  # and it learns


H100_CPU = ["cluster=h100", "cluster.device=cpu"]


@pytest.mark.parametrize("backend,nproc,overrides,rtol", [
    ("fsdp2", 1, ["trainer.micro_batch_size=4", *H100_CPU], MIGRATION_RTOL),
    ("fsdp2", 4, ["trainer.micro_batch_size=1", "cluster=b200", "cluster.device=cpu"], MIGRATION_RTOL),
    ("deepspeed", 1, ["distributed.zero_stage=2", "trainer.micro_batch_size=4", *H100_CPU], MIGRATION_RTOL),
    ("deepspeed", 1, ["trainer.micro_batch_size=4", *H100_CPU], MIGRATION_RTOL),
], ids=["fsdp2-ws1-mb4-h100", "fsdp2-ws4-mb1-b200", "zero2-universal-ws1-mb4", "zero3-universal-ws1-mb4"])
def test_checkpoint_continues_at_another_world_size(backend, nproc, overrides, rtol, reference, tmp_path):
    stage = [o for o in overrides if o.startswith("distributed.zero_stage")]
    ref = reference(backend, *stage)
    launch.run(tmp_path, nproc, f"distributed={backend}", f"checkpoint.load_path={ref / 'checkpoints' / 'step6'}",
               *overrides)
    got, want = launch.losses(tmp_path), launch.losses(ref)
    assert sorted(got) == [7, 8, 9, 10]
    assert got[7] == pytest.approx(want[7], rel=1e-6)  # the loaded weights themselves are exact
    worst = max(abs(got[s] - want[s]) / abs(want[s]) for s in got)
    print(f"{backend} world size {nproc}: max relative loss difference {worst:.3g}")
    assert worst <= rtol
    config = (tmp_path / "config.yaml").read_text()
    cluster = next(o.split("=")[1] for o in overrides if o.startswith("cluster="))
    assert f"name: {cluster}\n" in config
    events = [json.loads(line) for line in (tmp_path / "goodput/events.jsonl").read_text().splitlines()]
    assert {e["world_size"] for e in events} == {nproc}


def test_checkpoint_of_another_model_is_refused(reference, tmp_path):
    ref = reference("fsdp2")
    out = launch.run(tmp_path, 0, "distributed=single", f"checkpoint.load_path={ref / 'checkpoints' / 'step3'}",
                     "model.d_model=64", expect=1)
    assert "does not fit" in out and "d_model" in out


def test_data_vocab_larger_than_model_vocab_is_refused(tmp_path):
    out = launch.run(tmp_path, 0, "model.vocab_size=1024", expect=1)
    assert "vocab_size" in out and "DataError" in out


def test_bf16_parameters_with_selective_checkpointing_track_float32(reference, tmp_path):
    """fsdp2 with bf16 parameters (fp32 reduction) and selective activation checkpointing, 2 ranks."""
    launch.run(tmp_path, 2, "distributed=fsdp2", "distributed.param_dtype=bfloat16",
               "distributed.activation_checkpointing=selective")
    got, want = launch.losses(tmp_path), launch.losses(reference("fsdp2"))
    assert sorted(got) == list(range(1, 11))
    worst = max(abs(got[s] - want[s]) / want[s] for s in got)
    print(f"bf16 vs fp32: max relative loss difference {worst:.3g}")
    assert 0 < worst < 1e-2  # bf16 rounding shows (measured 1.4e-3), but the curve follows float32's
