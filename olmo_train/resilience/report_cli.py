"""`olmo-goodput`: the goodput report of a run, and the checkpoint-interval planner.

    olmo-goodput RUN_DIR [--json] [--plot FILE.png] [--wandb auto|on|off]
    olmo-goodput plan --gpus 512 --failure-rate 2e-5 --checkpoint-s 10 --recovery-s 240 [--json]
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from olmo_train.resilience.goodput import RECOVERY_PARTS, GoodputReport, Summary, analyze
from olmo_train.resilience.ledger import ledger_path, read_events


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if abs(seconds) >= 3600:
        return f"{seconds / 3600:.2f} h"
    if abs(seconds) >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _summary_row(name: str, s: Summary) -> str:
    return (f"{name:<9} {_fmt_s(s.wall_s):>10} {100 * s.active_fraction:7.1f}% {_fmt_s(s.active_s):>10} "
            f"{_fmt_s(s.checkpoint_s):>9} {_fmt_s(s.lost_s):>9} {_fmt_s(s.recovery_s):>10} {_fmt_s(s.other_s):>9} "
            f"{s.attempts:>4} {s.interruptions:>4} {_fmt_s(s.recovery_median_s):>9} {_fmt_s(s.recovery_p90_s):>9}")


def format_report(report: GoodputReport, run_dir: str | Path) -> str:
    o = report.overall
    lines = [f"goodput of {run_dir}: {o.attempts} attempts, {o.interruptions} interruptions, "
             f"{o.steps_kept} steps kept, {o.steps_lost} redone, {o.checkpoints} checkpoints",
             "",
             f"{'segment':<9} {'wall':>10} {'active':>8} {'active':>10} {'ckpt':>9} {'lost':>9} {'recovery':>10} "
             f"{'other':>9} {'att':>4} {'int':>4} {'rec p50':>9} {'rec p90':>9}"]
    lines += [_summary_row(name, s) for name, s in report.segments.items()]
    if len(report.segments) > 1:
        lines.append(_summary_row("overall", o))
    if report.recoveries:
        lines += ["", "recoveries (s): interrupted -> next attempt, kind, total = requeue wait + start-up + "
                  "checkpoint load + first step (+ failed restarts); lost work; detection (not in total)"]
        for r in report.recoveries:
            lines.append(
                f"  {r.failed_attempt} -> {r.next_attempt} {r.kind:<9} {r.recovery_s:7.1f} = "
                f"{r.requeue_wait_s:6.1f} + {r.startup_s:5.1f} + {r.checkpoint_load_s:5.1f} + {r.first_step_s:5.1f}"
                f"{f' + {r.failed_restarts_s:.1f}' if r.failed_restarts_s else ''}   lost {r.lost_steps} steps "
                f"({r.lost_s:.1f} s)   detection {r.detection_s:.1f}"
                f"{f'   (start-up: launch {r.launch_s:.1f})' if r.launch_s is not None else ''}")
        parts = o.recovery_parts_median_s
        lines.append("  median parts: " + ", ".join(f"{p.removesuffix('_s')} {parts[p]:.1f} s"
                                                     for p in RECOVERY_PARTS))
    return "\n".join(lines)


def wandb_summary(report: GoodputReport) -> dict[str, float]:
    """Flat `goodput/...` numbers for a W&B run summary (overall and per hardware segment)."""
    out: dict[str, float] = {}
    for name, s in [("overall", report.overall), *report.segments.items()]:
        prefix = f"goodput/{name}"
        out |= {f"{prefix}/active_fraction": s.active_fraction, f"{prefix}/wall_s": s.wall_s,
                f"{prefix}/active_s": s.active_s, f"{prefix}/checkpoint_s": s.checkpoint_s,
                f"{prefix}/lost_s": s.lost_s, f"{prefix}/recovery_s": s.recovery_s,
                f"{prefix}/interruptions": s.interruptions, f"{prefix}/steps_lost": s.steps_lost}
        if s.recovery_median_s is not None:
            out[f"{prefix}/recovery_median_s"] = s.recovery_median_s
            out[f"{prefix}/recovery_p90_s"] = s.recovery_p90_s
            out |= {f"{prefix}/recovery_median/{p}": v for p, v in s.recovery_parts_median_s.items()}
    return out


def log_to_wandb(run: object, report: GoodputReport) -> None:
    """Writes the report into a live W&B run: summary numbers plus a table of recoveries. The trainer's W&B
    callback can call this at close; `olmo-goodput --wandb` calls it on the run whose id is kept in RUN."""
    import wandb

    run.summary.update(wandb_summary(report))
    columns = ["failed_attempt", "next_attempt", "kind", "recovery_s", *RECOVERY_PARTS, "lost_steps", "lost_s"]
    table = wandb.Table(columns=columns)
    for r in report.recoveries:
        table.add_data(*(getattr(r, c) for c in columns))
    run.log({"goodput/recoveries": table})


def wandb_run_id(run_dir: Path) -> str | None:
    """The W&B run id the trainer keeps in RUN (RUN/wandb/run_id), if any."""
    for path in (run_dir / "wandb" / "run_id", run_dir / "wandb_run_id"):
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
    return None


def _cmd_report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not ledger_path(run_dir).exists():
        print(f"olmo-goodput: no ledger at {ledger_path(run_dir)}: is {run_dir} a run directory?", file=sys.stderr)
        return 2
    report = analyze(read_events(run_dir))
    print(json.dumps(report.to_dict(), indent=1) if args.json else format_report(report, run_dir))
    if args.plot:
        from olmo_train.resilience.plot import plot_run

        plot_run(run_dir, report, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    run_id = wandb_run_id(run_dir)
    if args.wandb == "on" and run_id is None:
        print(f"olmo-goodput: --wandb on: no W&B run id in {run_dir}/wandb/run_id", file=sys.stderr)
        return 2
    logged_before = run_id is not None and any((run_dir / "wandb").glob(f"*-{run_id}"))
    if args.wandb == "on" or (args.wandb == "auto" and logged_before):
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        run = wandb.init(id=run_id, resume="allow", dir=str(run_dir), mode=mode)
        log_to_wandb(run, report)
        run.finish()
        print(f"goodput summary logged to W&B run {run_id} ({mode})", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "plan":
        from olmo_train.resilience.planner import main as plan_main

        return plan_main(argv[1:])
    parser = argparse.ArgumentParser(prog="olmo-goodput", description=__doc__.split("\n\n")[0],
                                     epilog="`olmo-goodput plan --help`: the checkpoint-interval planner")
    parser.add_argument("run_dir", help="the run directory (holds goodput/events.jsonl)")
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    parser.add_argument("--plot", metavar="FILE.png", help="timeline of attempts beside the loss curve")
    parser.add_argument("--wandb", choices=("auto", "on", "off"), default="auto",
                        help="log the figures to the run's W&B run (id from RUN/wandb/run_id); auto = when the "
                        "trainer logged to W&B in RUN (online with WANDB_API_KEY, else offline)")
    return _cmd_report(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
