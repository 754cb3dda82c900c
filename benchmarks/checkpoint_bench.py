"""Checkpoint save / load timings: the blocking part of an async save (staging to CPU memory, what training
waits for), its background part (DCP write, fsync, manifest, commit, retention), a blocking save for contrast,
and a load back into the model, for a model + AdamW state.

CPU:  .venv/bin/python benchmarks/checkpoint_bench.py --device cpu --model tiny
GPU:  source .device/setup.sh && PYTHONUNBUFFERED=1 python3 benchmarks/checkpoint_bench.py --device cuda \
          --model olmo_hybrid_1b --dir /tmp/ckpt_bench
Results print as they come and are written as JSON to $OUT/checkpoint_bench_<device>_<model>.json (or --json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from olmo_train.checkpoint import CheckpointConfig, CheckpointManager, training_state  # noqa: E402
from olmo_train.model import OlmoHybrid, presets  # noqa: E402

RESULTS: dict[str, object] = {}


def record(key: str, value: object) -> None:
    RESULTS[key] = value
    print(f"{key}: {value}", flush=True)


def build(model_name: str, device: str) -> tuple[OlmoHybrid, torch.optim.AdamW]:
    """The preset's model in fp32 on `device` (built on meta, no CPU init) with an initialised AdamW state."""
    with torch.device("meta"):
        model = OlmoHybrid(presets.get(model_name))
    model.to_empty(device=device)
    with torch.no_grad():
        if device == "cuda":  # values do not matter for timings: draw on the GPU, not through the CPU init
            for p in model.parameters():
                p.normal_(0.0, 0.02)
        else:
            model.init_weights(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    opt.step()  # exp_avg / exp_avg_sq exist and are non-zero, as mid-training
    opt.zero_grad(set_to_none=True)
    return model, opt


def fs_info(path: Path) -> dict[str, object]:
    """Mount point, file system type and free space of the file system holding `path`."""
    path.mkdir(parents=True, exist_ok=True)
    resolved = str(path.resolve())
    mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    holding = [m for m in mounts if resolved == m[0] or resolved.startswith(m[0].rstrip("/") + "/")]
    mount, fstype = max(holding, key=lambda m: len(m[0]), default=["?", "?"])
    st = os.statvfs(path)
    return {"dir": str(path), "mount": mount, "fstype": fstype, "free_gb": round(st.f_bavail * st.f_frsize / 1e9)}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_saves(mgr: CheckpointManager, model: OlmoHybrid, opt: torch.optim.AdamW, steps: list[int],
                device: str) -> None:
    for step in steps:
        sync(device)
        t0 = time.perf_counter()
        mgr.save(step, training_state(model, opt, {"tokens": step}))
        t1 = time.perf_counter()
        mgr.wait()
        t2 = time.perf_counter()
        parts = {k: round(v, 3) for k, v in mgr.last_timings.items() if k in ("write_s", "commit_s", "retention_s")}
        record(f"async_save_step{step}", {"blocking_s": round(t1 - t0, 3), "background_s": round(t2 - t1, 3),
                                          "total_s": round(t2 - t0, 3), **parts})


def run(args: argparse.Namespace) -> None:
    device = args.device
    record("torch", torch.__version__)
    if device == "cuda":
        record("gpu", torch.cuda.get_device_name())
    t0 = time.perf_counter()
    model, opt = build(args.model, device)
    sync(device)
    record("model", {"preset": args.model, "params": model.num_params(), "build_s": round(time.perf_counter() - t0, 2)})
    run_dir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ckpt_bench_"))
    shutil.rmtree(run_dir, ignore_errors=True)
    record("filesystem", fs_info(run_dir))
    cfg = CheckpointConfig(interval=1, keep=1, async_save=True, write_threads=args.write_threads)
    mgr = CheckpointManager(cfg, run_dir, model_config=model.config)
    try:
        timed_saves(mgr, model, opt, list(range(1, args.saves + 1)), device)
    except Exception as e:  # noqa: BLE001 - record it and measure the rest from what was committed
        record("async_save_error", f"{type(e).__name__}: {e}")
    ckpt = mgr.resume_path()
    size = dir_bytes(ckpt)
    record("checkpoint", {"path": str(ckpt), "gb": round(size / 1e9, 3)})

    sync_mgr = CheckpointManager(dataclasses.replace(cfg, async_save=False), run_dir, model_config=model.config)
    t0 = time.perf_counter()
    sync_mgr.save(args.saves + 1, training_state(model, opt, {"tokens": 0}))
    record("sync_save_s", round(time.perf_counter() - t0, 3))

    expected = model.lm_head.weight.detach()[:4, :4].clone()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    sync(device)
    t0 = time.perf_counter()
    mgr.load(mgr.resume_path(), training_state(model, opt))
    sync(device)
    load_s = time.perf_counter() - t0
    assert torch.equal(model.lm_head.weight[:4, :4], expected), "load did not restore the weights"
    record("load_s", round(load_s, 3))
    record("load_gb_per_s", round(size / 1e9 / load_s, 2))
    mgr.close()
    sync_mgr.close()
    if not args.keep_files:
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default="tiny", help=f"a preset of olmo_train.model.presets: {presets.names()}")
    parser.add_argument("--saves", type=int, default=3, help="async saves in a row (the first allocates buffers)")
    parser.add_argument("--write-threads", type=int, default=1)
    parser.add_argument("--dir", default=None, help="run directory to write to (default: a new temp dir)")
    parser.add_argument("--keep-files", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    try:
        run(args)
    finally:
        out = args.json or os.path.join(os.environ.get("OUT", "."), f"checkpoint_bench_{args.device}_{args.model}.json")
        Path(out).write_text(json.dumps(RESULTS, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
