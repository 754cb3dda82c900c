"""A measured local ledger for the planner: the tiny model on 2 CPU ranks under the submitit launcher (local
executor), with failures injected as a Poisson process (SIGKILL of a random rank, or of the starting torchrun
during a recovery), then the planner's prediction from the run's own inputs against what the run measured.

    python benchmarks/goodput_chaos.py --mtbf-s 40 --steps 160 --out /tmp/chaos [--seed 0]
"""

import argparse
import json
import random
import signal
import threading
import time
from pathlib import Path

import psutil

from olmo_train.launch.submitit_launcher import SubmititConfig, launch
from olmo_train.resilience.goodput import analyze
from olmo_train.resilience.ledger import read_events
from olmo_train.resilience.planner import active_fraction, check_against_ledger, simulate

TINY = ["distributed=fsdp2", "trainer.global_batch_tokens=512", "trainer.seq_len=64", "logger.wandb.mode=disabled",
        "resilience.ledger_step_interval=1", "resilience.signal_check_interval=1"]


def victims(run_dir: Path) -> list[psutil.Process]:
    """Trainer ranks of the run, else its starting torchrun (a failure during a recovery)."""
    needle = f"run.dir={run_dir}"
    ranks, launchers = [], []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if needle not in cmd:
            continue
        try:
            (ranks if "RANK" in proc.environ() else launchers).append(proc)
        except psutil.Error:
            continue
    return ranks or launchers


def chaos(run_dir: Path, mtbf_s: float, seed: int, stop: threading.Event, log: list) -> None:
    rng = random.Random(seed)
    while not stop.wait(rng.expovariate(1 / mtbf_s)):
        procs = victims(run_dir)
        entry = {"time": time.time(), "candidates": len(procs), "killed": None}
        if procs:
            victim = rng.choice(procs)
            try:
                victim.send_signal(signal.SIGKILL)
                entry["killed"] = victim.pid
            except psutil.Error:
                pass
        log.append(entry)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mtbf-s", type=float, default=40.0)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--interval", type=int, default=8, help="checkpoint interval in steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/goodput-chaos")
    args = parser.parse_args()
    run_dir = Path(args.out).resolve() / "run"
    stop, kills = threading.Event(), []
    thread = threading.Thread(target=chaos, args=(run_dir, args.mtbf_s, args.seed, stop, kills), daemon=True)
    thread.start()
    t0 = time.time()
    cfg = SubmititConfig(executor="local", procs_per_node=2, max_restarts=1000, timeout_min=60)
    result = launch([*TINY, f"trainer.max_steps={args.steps}", f"checkpoint.interval={args.interval}"], cfg, run_dir)
    stop.set()
    events = read_events(run_dir)
    report = analyze(events)
    check = check_against_ledger(events, gpus=2)
    sims = simulate(check.inputs, check.interval_s, work_s=report.overall.active_s, runs=2000, seed=args.seed)
    out = {"wall_s": time.time() - t0, "result": result, "kills": sum(1 for k in kills if k["killed"]),
           "arrivals": [{**k, "time": round(k["time"] - t0, 1)} for k in kills], "mtbf_s_injected": args.mtbf_s,
           "interruptions": report.overall.interruptions, "inputs": {
               "failure_rate_per_gpu_h": check.inputs.failure_rate, "mtbf_s": check.inputs.mtbf_s,
               "checkpoint_s": check.inputs.checkpoint_s, "recovery_s": check.inputs.recovery_s,
               "interval_s": check.interval_s},
           "predicted_active_of_modelled": check.predicted, "measured_active_of_modelled": check.measured,
           "monte_carlo_same_work": {"mean": float(sims.mean()), "p5": float(sorted(sims)[len(sims) // 20]),
                                     "p95": float(sorted(sims)[-len(sims) // 20])},
           "formula_at_interval": active_fraction(check.inputs, check.interval_s),
           "recovery_median_s": report.overall.recovery_median_s,
           "recovery_parts_median_s": report.overall.recovery_parts_median_s,
           "overall_active_fraction": report.overall.active_fraction}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "chaos.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
