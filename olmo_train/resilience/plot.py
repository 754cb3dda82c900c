"""The goodput figure: attempts, interruptions, checkpoints and productive time on one timeline, beside the loss
curve across attempts (RUN/metrics.jsonl: one JSON object per step with `step` and `loss`)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from olmo_train.logging.jsonl import read_metrics  # noqa: E402
from olmo_train.resilience.goodput import GoodputReport, kept_limits  # noqa: E402

OUTCOME_COLORS = {"finished": "#4c72b0", "preempted": "#dd8452", "hang": "#c44e52", "failed": "#c44e52",
                  "crashed": "#c44e52", "unhealthy": "#8172b3"}


def loss_segments(metrics_path: Path) -> list[tuple[list[int], list[float]]]:
    """metrics.jsonl split where the step goes back (a new attempt resumed from an earlier checkpoint)."""
    segments: list[tuple[list[int], list[float]]] = []
    last = None
    for record in read_metrics(metrics_path):
        if not isinstance(record, dict) or "step" not in record or record.get("loss") is None:
            continue
        step = int(record["step"])
        if last is None or step <= last:
            segments.append(([], []))
        segments[-1][0].append(step)
        segments[-1][1].append(float(record["loss"]))
        last = step
    return segments


def _timeline(ax: plt.Axes, report: GoodputReport) -> None:
    attempts = report.attempts
    t0 = min(a.first_time for a in attempts)
    m = lambda t: (t - t0) / 60  # noqa: E731 - minutes since the run's first event
    limits = kept_limits(attempts)
    rows = {"attempts": 3, "recovery": 2, "training": 1, "checkpoints": 0}
    for i, a in enumerate(attempts):
        color = OUTCOME_COLORS.get(a.outcome, "#999999")
        ax.broken_barh([(m(a.first_time), m(a.last_time) - m(a.first_time))], (rows["attempts"] - 0.35, 0.7),
                       facecolors=color, alpha=0.35, edgecolors=color)
        ax.text(m(a.first_time), rows["attempts"] + 0.42, f"{a.name}\n{a.outcome}", fontsize=7, va="bottom")
        kept, lost = [], []
        for span in a.spans:
            frac = span.fraction_up_to(limits[i])
            width = m(span.end) - m(span.start)
            if frac > 0:
                kept.append((m(span.start), width * frac))
            if frac < 1:
                lost.append((m(span.start) + width * frac, width * (1 - frac)))
        ax.broken_barh(kept, (rows["training"] - 0.35, 0.7), facecolors="#55a868")
        ax.broken_barh(lost, (rows["training"] - 0.35, 0.7), facecolors="#c44e52", hatch="//", alpha=0.7)
        ckpt_times = [m(c[0]) for c in a.checkpoints]
        ax.plot(ckpt_times, [rows["checkpoints"]] * len(ckpt_times), "|", color="#4c72b0", markersize=14, mew=2)
    for r in report.recoveries:
        ax.broken_barh([(m(r.failure_time), r.recovery_s / 60)], (rows["recovery"] - 0.35, 0.7),
                       facecolors="#c44e52", alpha=0.6)
        ax.plot([m(r.failure_time)], [rows["attempts"]], "X", color="black", markersize=9)
        ax.text(m(r.failure_time), rows["recovery"] - 0.5, f"{r.recovery_s:.0f}s", fontsize=7, ha="left", va="top")
    ax.set_yticks(list(rows.values()), [k for k in rows])
    ax.set_ylim(-0.8, 4.2)
    ax.set_xlabel("minutes since the run's first event")
    o = report.overall
    ax.set_title(f"{100 * o.active_fraction:.1f}% active, {o.interruptions} interruptions, median recovery "
                 f"{o.recovery_median_s or 0:.1f} s, {o.steps_lost} steps redone", fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def _attempt_of_steps(report: GoodputReport) -> list[tuple[str, int, int]]:
    """(attempt, first step, last step) each attempt ran, in order."""
    return [(a.name, a.spans[0].first, a.spans[-1].last) for a in report.attempts if a.spans]


def _loss(ax: plt.Axes, run_dir: Path, report: GoodputReport) -> None:
    """The loss curve, each point coloured by the attempt that logged it (the ledger's step ranges), with the
    points where an attempt resumed from a checkpoint marked; redone steps overlap when the trainer logs them."""
    segments = loss_segments(run_dir / "metrics.jsonl")
    ranges = _attempt_of_steps(report)
    names = [r[0] for r in ranges]
    colors = plt.get_cmap("tab10")
    labelled: set[str] = set()
    for steps, losses in segments:
        groups: list[tuple[str, list[int], list[float]]] = []
        for step, loss in zip(steps, losses):
            owner = next((n for n, lo, hi in ranges if lo <= step <= hi), "?")
            if not groups or groups[-1][0] != owner:
                groups.append((owner, [], []))
            groups[-1][1].append(step)
            groups[-1][2].append(loss)
        for owner, xs, ys in groups:
            i = names.index(owner) if owner in names else len(names)
            ax.plot(xs, ys, "-", color=colors(i % 10), lw=2, alpha=0.9,
                    label=None if owner in labelled else f"attempt {owner}")
            labelled.add(owner)
    resumes: dict[int, list[str]] = {}
    for a in report.attempts:
        if a.loaded_step:
            resumes.setdefault(a.loaded_step, []).append(a.name)
    for step, who in resumes.items():
        ax.axvline(step, color="gray", ls=":", lw=1)
        ax.text(step, 1.0, f" {', '.join(who)} resumed", rotation=90, va="top", fontsize=7,
                transform=ax.get_xaxis_transform())
    if not segments:
        ax.text(0.5, 0.5, "no metrics.jsonl", ha="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("loss across attempts (dotted: resumed from a checkpoint)", fontsize=10)
    ax.grid(alpha=0.3)
    if segments:
        ax.legend(fontsize=7)


def plot_run(run_dir: str | Path, report: GoodputReport, out: str | Path) -> Path:
    fig, (ax_time, ax_loss) = plt.subplots(1, 2, figsize=(15, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    if report.attempts:
        _timeline(ax_time, report)
    _loss(ax_loss, Path(run_dir), report)
    fig.suptitle(f"goodput: {run_dir}", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
