"""The checkpoint-interval planner: predicted active training time and the best checkpoint interval for a job of
N GPUs with exponential failures, checked against a Monte Carlo simulation of the same process.

Model (Daly 2006, "A higher order estimate of the optimum checkpoint interval"): work proceeds in periods of
tau seconds followed by a blocking checkpoint of C seconds; failures arrive as a Poisson process of rate
N * lambda (lambda per GPU-hour), also during checkpoints and recoveries; a failure costs a recovery of R seconds
and the work since the last committed checkpoint. With M = 3600 / (N lambda) the mean time between failures:
    expected wall time per period  = M e^(R/M) (e^((tau + C)/M) - 1)
    active fraction                = tau / that
Young's first-order optimum is tau = sqrt(2 C M); Daly's higher-order one adds terms in C/M. `plan` also finds
the exact optimum of the formula numerically, and `simulate` runs the process itself.
"""

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from olmo_train.errors import ConfigError


@dataclass(frozen=True, slots=True)
class PlanInput:
    gpus: int
    failure_rate: float
    """Failures per GPU-hour (e.g. 2e-5: Llama 3's 419 interruptions over 54 days on 16,384 GPUs)."""
    checkpoint_s: float
    """Blocking time of one checkpoint save (the training loop's stall, not the async upload)."""
    recovery_s: float
    """Interruption to the first step of the next attempt (the report's recovery time)."""

    def __post_init__(self) -> None:
        if self.gpus < 1:
            raise ConfigError(f"--gpus={self.gpus}: must be >= 1")
        if self.failure_rate < 0:
            raise ConfigError(f"--failure-rate={self.failure_rate}: failures per GPU-hour, must be >= 0")
        if self.checkpoint_s < 0 or self.recovery_s < 0:
            raise ConfigError(f"--checkpoint-s={self.checkpoint_s}, --recovery-s={self.recovery_s}: must be >= 0")

    @property
    def mtbf_s(self) -> float:
        """Mean time between failures of the whole job, seconds (inf without failures)."""
        rate = self.gpus * self.failure_rate
        return 3600.0 / rate if rate > 0 else math.inf


def active_fraction(p: PlanInput, interval_s: float) -> float:
    """Expected fraction of wall time spent in kept training work with a checkpoint every `interval_s` of work."""
    m = p.mtbf_s
    if math.isinf(m):
        return interval_s / (interval_s + p.checkpoint_s)
    return interval_s / (m * math.exp(p.recovery_s / m) * math.expm1((interval_s + p.checkpoint_s) / m))


def young_interval(p: PlanInput) -> float:
    return math.sqrt(2 * p.checkpoint_s * p.mtbf_s)


def daly_interval(p: PlanInput) -> float:
    m, c = p.mtbf_s, p.checkpoint_s
    if c >= 2 * m:
        return m
    return math.sqrt(2 * c * m) * (1 + math.sqrt(c / (2 * m)) / 3 + c / (18 * m)) - c


def best_interval(p: PlanInput) -> float:
    """The interval that maximises `active_fraction` (golden-section search on log tau; the function is unimodal)."""
    if math.isinf(p.mtbf_s) or p.checkpoint_s == 0:
        return math.inf if p.checkpoint_s > 0 or math.isinf(p.mtbf_s) else 0.0
    lo, hi = math.log(1e-3), math.log(100 * p.mtbf_s)
    g = (math.sqrt(5) - 1) / 2
    f = lambda x: -active_fraction(p, math.exp(x))  # noqa: E731
    for _ in range(200):
        c, d = hi - g * (hi - lo), lo + g * (hi - lo)
        if f(c) < f(d):
            hi = d
        else:
            lo = c
    return math.exp((lo + hi) / 2)


def simulate(p: PlanInput, interval_s: float, *, work_s: float, runs: int = 200, seed: int = 0) -> np.ndarray:
    """Active fraction of `runs` simulated jobs that each need `work_s` seconds of training (vectorised over
    runs). Failures: exponential with mean `mtbf_s`, memoryless, also during checkpoints and recoveries."""
    rng = np.random.default_rng(seed)
    periods = max(1, math.ceil(work_s / interval_s))
    wall = np.zeros(runs)
    m = p.mtbf_s
    for k in range(periods):
        work = min(interval_s, work_s - k * interval_s)
        need = work + p.checkpoint_s
        pending = np.ones(runs, dtype=bool)
        while pending.any():
            n = int(pending.sum())
            ttf = rng.exponential(m, n) if math.isfinite(m) else np.full(n, np.inf)
            done = ttf >= need
            cost = np.where(done, need, ttf)
            idx = np.flatnonzero(pending)
            wall[idx] += cost
            failed = idx[~done]
            wall[failed] += _recoveries(rng, m, p.recovery_s, failed.size)
            pending[idx[done]] = False
    return work_s / wall


def _recoveries(rng: np.random.Generator, m: float, r: float, n: int) -> np.ndarray:
    """Time to complete a recovery of `r` seconds that restarts whenever a failure strikes during it."""
    total = np.zeros(n)
    pending = np.ones(n, dtype=bool)
    while pending.any() and r > 0:
        k = int(pending.sum())
        ttf = rng.exponential(m, k) if math.isfinite(m) else np.full(k, np.inf)
        idx = np.flatnonzero(pending)
        total[idx] += np.minimum(ttf, r)
        pending[idx[ttf >= r]] = False
    return total


def max_failure_rate(gpus: int, checkpoint_s: float, recovery_s: float, target: float) -> float:
    """The highest failure rate per GPU-hour at which the best interval still reaches `target` active fraction
    (bisection on log lambda); 0 when even a failure-free run cannot reach it (checkpoint overhead alone)."""
    def ok(rate: float) -> bool:
        p = PlanInput(gpus=gpus, failure_rate=rate, checkpoint_s=checkpoint_s, recovery_s=recovery_s)
        return active_fraction(p, best_interval(p)) >= target

    if not ok(1e-12):
        return 0.0
    lo, hi = math.log(1e-12), math.log(10.0)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(math.exp(mid)) else (lo, mid)
    return math.exp(lo)


@dataclass(frozen=True, slots=True)
class Plan:
    mtbf_h: float
    young_interval_s: float
    daly_interval_s: float
    best_interval_s: float
    best_active_fraction: float
    interval_s: float
    active_fraction: float
    simulated_mean: float | None
    simulated_ci95: float | None


def make_plan(p: PlanInput, interval_s: float | None = None, *, simulate_runs: int = 200,
              work_h: float = 500.0, seed: int = 0) -> Plan:
    best = best_interval(p)
    interval = best if interval_s is None else interval_s
    sim_mean = sim_ci = None
    if simulate_runs and math.isfinite(interval) and interval > 0:
        sims = simulate(p, interval, work_s=work_h * 3600, runs=simulate_runs, seed=seed)
        sim_mean = float(sims.mean())
        sim_ci = float(1.96 * sims.std(ddof=1) / math.sqrt(len(sims))) if len(sims) > 1 else 0.0
    return Plan(mtbf_h=p.mtbf_s / 3600, young_interval_s=young_interval(p), daly_interval_s=daly_interval(p),
                best_interval_s=best, best_active_fraction=active_fraction(p, best), interval_s=interval,
                active_fraction=active_fraction(p, interval), simulated_mean=sim_mean, simulated_ci95=sim_ci)


def format_plan(p: PlanInput, plan: Plan, step_s: float | None) -> str:
    def steps(seconds: float) -> str:
        return f" ({seconds / step_s:,.0f} steps)" if step_s and math.isfinite(seconds) else ""

    lines = [f"{p.gpus} GPUs x {p.failure_rate:g} failures/GPU-hour: a failure every {plan.mtbf_h:.1f} h; "
             f"checkpoint {p.checkpoint_s:g} s, recovery {p.recovery_s:g} s",
             f"  Young interval  sqrt(2CM)       {plan.young_interval_s:10.0f} s{steps(plan.young_interval_s)}",
             f"  Daly interval   (higher order)  {plan.daly_interval_s:10.0f} s{steps(plan.daly_interval_s)}",
             f"  best interval   (exact model)   {plan.best_interval_s:10.0f} s{steps(plan.best_interval_s)}: "
             f"{100 * plan.best_active_fraction:.2f}% active",
             f"  at interval {plan.interval_s:.0f} s{steps(plan.interval_s)}: predicted "
             f"{100 * plan.active_fraction:.2f}% active"]
    if plan.simulated_mean is not None:
        lines.append(f"  Monte Carlo: {100 * plan.simulated_mean:.2f}% +- {100 * plan.simulated_ci95:.2f}% "
                     f"(95% CI of the mean)")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class LedgerCheck:
    inputs: PlanInput
    interval_s: float
    predicted: float
    measured: float


def check_against_ledger(events: Sequence[dict], gpus: int | None = None) -> LedgerCheck:
    """The planner's inputs as a measured run shows them (interruptions per GPU-hour, mean blocking checkpoint,
    mean recovery, work between checkpoints), its prediction, and the measured fraction of the modelled time
    (active / (active + checkpoint + lost + recovery): the model has no first start-up or idle time)."""
    from olmo_train.resilience.goodput import analyze

    report = analyze(events)
    s = report.overall
    gpus = gpus or max((a.world_size for a in report.attempts), default=1) or 1
    modelled = s.active_s + s.checkpoint_s + s.lost_s + s.recovery_s - s.first_steps_s
    if modelled <= 0 or s.checkpoints == 0:
        raise ConfigError("the ledger has no completed steps or no checkpoints: nothing to check the model on")
    rate = s.interruptions / (gpus * modelled / 3600)
    recovery = s.recovery_s / s.interruptions if s.interruptions else 0.0
    p = PlanInput(gpus=gpus, failure_rate=rate, checkpoint_s=s.checkpoint_s / s.checkpoints, recovery_s=recovery)
    interval = (s.active_s + s.lost_s) / s.checkpoints
    return LedgerCheck(inputs=p, interval_s=interval, predicted=active_fraction(p, interval),
                       measured=s.active_s / modelled)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="olmo-goodput plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-run", metavar="RUN_DIR", help="take the inputs from a measured run's ledger and "
                        "compare the prediction with what it measured")
    parser.add_argument("--gpus", type=int, help="GPUs in the job (with --from-run: default its world size)")
    parser.add_argument("--failure-rate", type=float, help="failures per GPU-hour")
    parser.add_argument("--checkpoint-s", type=float, help="blocking seconds per checkpoint")
    parser.add_argument("--recovery-s", type=float, help="seconds from failure to first step")
    parser.add_argument("--interval-s", type=float, help="evaluate this checkpoint interval too (seconds)")
    parser.add_argument("--step-s", type=float, help="seconds per training step (prints intervals in steps)")
    parser.add_argument("--target", type=float, help="also print the highest failure rate that keeps this "
                        "active fraction (e.g. 0.97)")
    parser.add_argument("--runs", type=int, default=200, help="Monte Carlo runs (0 = skip)")
    parser.add_argument("--work-h", type=float, default=500.0, help="training hours per simulated run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.from_run:
        from olmo_train.resilience.ledger import read_events

        check = check_against_ledger(read_events(args.from_run), args.gpus)
        print(json.dumps({"inputs": asdict(check.inputs), "interval_s": check.interval_s,
                          "predicted": check.predicted, "measured": check.measured}) if args.json else
              f"{args.from_run}: {check.inputs}\n  checkpoint every {check.interval_s:.1f} s of work: predicted "
              f"{100 * check.predicted:.1f}% active, measured {100 * check.measured:.1f}% (of the modelled time)")
        return 0
    missing = [n for n in ("gpus", "failure_rate", "checkpoint_s", "recovery_s") if getattr(args, n) is None]
    if missing:
        parser.error("needs " + ", ".join("--" + n.replace("_", "-") for n in missing) + " (or --from-run)")
    p = PlanInput(gpus=args.gpus, failure_rate=args.failure_rate, checkpoint_s=args.checkpoint_s,
                  recovery_s=args.recovery_s)
    plan = make_plan(p, args.interval_s, simulate_runs=args.runs, work_h=args.work_h)
    limit = (max_failure_rate(args.gpus, args.checkpoint_s, args.recovery_s, args.target)
             if args.target else None)
    if args.json:
        print(json.dumps({"input": asdict(p), **asdict(plan), "max_failure_rate_for_target": limit}))
    else:
        print(format_plan(p, plan, args.step_s))
        if limit == 0:
            print(f"  {100 * args.target:g}% active is out of reach: checkpoint cost alone exceeds the budget")
        elif limit is not None:
            print(f"  {100 * args.target:g}% active needs at most {limit:.3g} failures/GPU-hour "
                  f"(a failure every {1 / (limit * args.gpus):.1f} h on {args.gpus} GPUs) "
                  "from checkpointing and recovery alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
