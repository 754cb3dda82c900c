"""CPU step time and data-wait share of `olmo-train` (tiny model, stdlib corpus), from RUN/metrics.jsonl.

    .venv/bin/python benchmarks/train_cpu_step.py [--nproc N] [--steps S] [-- extra hydra overrides]

Runs the app once (nproc 0 = one plain process with distributed=single; N >= 1 = torchrun with fsdp2), drops
the first 3 steps (warm-up) and prints median step time, mean data-wait share, tokens/s per process.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        app = ["-m", "olmo_train.train.app", f"run.dir={run_dir}", f"trainer.max_steps={args.steps}",
               "logger.wandb.mode=disabled", "checkpoint.interval=0", *args.overrides]
        if args.nproc:
            cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc-per-node={args.nproc}",
                   *app, "distributed=fsdp2"]
        else:
            cmd = [sys.executable, *app]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "WANDB_SILENT": "true"}
        subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
        rows = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()][3:]
    step = statistics.median(r["step_time_s"] for r in rows)
    wait = sum(r["data_wait_s"] for r in rows) / sum(r["step_time_s"] for r in rows)
    tps = statistics.median(r["tokens_per_s_per_device"] for r in rows)
    print(f"steps {rows[0]['step']}-{rows[-1]['step']}: median step {step:.3f} s, data wait {100 * wait:.2f}% of step "
          f"time (max step {100 * max(r['data_wait_s'] / r['step_time_s'] for r in rows):.2f}%), "
          f"{tps:.0f} tokens/s per process, final loss {rows[-1]['loss']:.3f}")


if __name__ == "__main__":
    main()
