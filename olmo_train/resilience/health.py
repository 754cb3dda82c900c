"""Node health checks run before training and before a requeue: GPUs visible and idle, no stray processes of
this run, disk space and a writable run directory, free memory. Also the `olmo-healthcheck` command.

Prints one JSON line per node (`{"node", "ok", "checks": [{"name", "ok", "detail"}]}`) and exits 0 when healthy,
1 otherwise. Importing this module does not import torch; the GPU check asks `nvidia-smi`.

Test hook: `OLMO_HEALTHCHECK_FAIL=n2,n3` makes the check fail on those node names (emulated nodes share one
machine, so a real fault cannot be confined to one of them).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

FAIL_ENV = "OLMO_HEALTHCHECK_FAIL"
GiB = 1024**3
_NOT_STRAYS = {"bash", "sh", "dash", "zsh", "srun", "sbatch", "salloc", "slurmstepd", "timeout"}


@dataclass(slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def check_gpus(expected: int, *, max_used_mib: int = 1024,
               query: Callable[[], tuple[list[list[str]], list[str]] | None] | None = None) -> CheckResult:
    """`expected` GPUs visible, each with under `max_used_mib` memory in use and no compute process on it."""
    if expected == 0:
        return CheckResult("gpu", True, "no GPUs expected")
    result = (query or _nvidia_smi)()
    if result is None:
        return CheckResult("gpu", False, f"{expected} GPUs expected but nvidia-smi is missing or failed")
    gpus, apps = result
    problems = []
    if len(gpus) < expected:
        problems.append(f"{len(gpus)} of {expected} GPUs visible")
    for index, used in gpus:
        if float(used) > max_used_mib:
            problems.append(f"GPU {index} has {used} MiB in use")
    if apps:
        problems.append(f"compute processes on the GPUs: {', '.join(apps)}")
    return CheckResult("gpu", not problems, "; ".join(problems) or f"{len(gpus)} GPUs idle")


def _nvidia_smi() -> tuple[list[list[str]], list[str]] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30, check=True).stdout
        apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,process_name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    rows = [[c.strip() for c in line.split(",")] for line in gpus.splitlines() if line.strip()]
    return rows, [line.strip() for line in apps.splitlines() if line.strip()]


def stray_processes(run_dir: str | None, *, ignore_attempt: str | None = None,
                    exclude: set[int] | None = None) -> list[str]:
    """Processes other than ours and our ancestors whose command line names this run's directory (leftovers of an
    earlier attempt that would fight the new one for GPUs, ports and checkpoint files). Shells and Slurm's own
    commands are not counted: the batch script itself carries the run's overrides. Processes of attempt
    `ignore_attempt` (SLURM_JOB_ID.SLURM_RESTART_COUNT in their environment) are not counted either, so the check can
    run while that attempt's trainer starts."""
    if not run_dir:
        return []
    needles = {f"run.dir={run_dir}", f"run.dir={os.path.abspath(run_dir)}"}
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents()), *(exclude or set())}
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if (proc.info["pid"] in mine or proc.info["status"] == psutil.STATUS_ZOMBIE
                or proc.info["name"] in _NOT_STRAYS or not any(arg in needles for arg in cmdline)):
            continue
        if ignore_attempt is not None and _attempt_of(proc) == ignore_attempt:
            continue
        found.append(f"{proc.info['pid']}: {' '.join(cmdline)[:120]}")
    return found


def _attempt_of(proc: psutil.Process) -> str | None:
    try:
        env = proc.environ()
    except (psutil.Error, OSError):
        return None
    return f"{env['SLURM_JOB_ID']}.{env.get('SLURM_RESTART_COUNT') or 0}" if env.get("SLURM_JOB_ID") else None


def check_strays(run_dir: str | None, grace_s: float = 10.0, ignore_attempt: str | None = None) -> CheckResult:
    """Waits up to `grace_s` for leftovers to exit (Slurm kills a failed step's tasks after KillWait)."""
    deadline = time.monotonic() + grace_s
    while (found := stray_processes(run_dir, ignore_attempt=ignore_attempt)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if found:
        return CheckResult("strays", False, f"{len(found)} stray processes of this run: {'; '.join(found[:3])}")
    return CheckResult("strays", True, "none")


def check_disk(path: str, min_free_gib: float) -> CheckResult:
    """At least `min_free_gib` free under `path` (its closest existing parent) and a file there can be written,
    fsync'd and removed (catches read-only and full file systems)."""
    target = Path(path)
    while not target.exists() and target != target.parent:
        target = target.parent
    free = shutil.disk_usage(target).free / GiB
    if free < min_free_gib:
        return CheckResult("disk", False, f"{free:.1f} GiB free under {target}, need {min_free_gib} GiB")
    probe = target / f".olmo-healthcheck-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        return CheckResult("disk", False, f"cannot write under {target}: {exc}")
    return CheckResult("disk", True, f"{free:.1f} GiB free under {target}, writable")


def check_memory(min_free_gib: float) -> CheckResult:
    available = psutil.virtual_memory().available / GiB
    ok = available >= min_free_gib
    return CheckResult("memory", ok, f"{available:.1f} GiB available" + ("" if ok else f", need {min_free_gib}"))


def check_forced_failure(node: str) -> CheckResult | None:
    failing = {n.strip() for n in os.environ.get(FAIL_ENV, "").split(",") if n.strip()}
    if node in failing:
        return CheckResult("forced", False, f"{FAIL_ENV} names this node ({node})")
    return None


def expected_gpus() -> int:
    """GPUs this node should have: Slurm's count for the job, else CUDA_VISIBLE_DEVICES, else 0."""
    if os.environ.get("SLURM_GPUS_ON_NODE"):
        return int(os.environ["SLURM_GPUS_ON_NODE"])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return len([d for d in visible.split(",") if d.strip()])


def run_checks(*, run_dir: str | None, gpus: int, min_disk_gib: float, min_mem_gib: float,
               stray_grace_s: float, ignore_attempt: str | None = None) -> dict:
    node = node_name()
    checks = [check_gpus(gpus), check_strays(run_dir, stray_grace_s, ignore_attempt),
              check_disk(run_dir or os.getcwd(), min_disk_gib), check_memory(min_mem_gib)]
    forced = check_forced_failure(node)
    if forced is not None:
        checks.append(forced)
    return {"node": node, "ok": all(c.ok for c in checks), "time": time.time(),
            "checks": [asdict(c) for c in checks]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="olmo-healthcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", help="run directory: disk checks and stray processes of this run")
    parser.add_argument("--gpus", type=int, default=None,
                        help="GPUs expected on this node (default: SLURM_GPUS_ON_NODE, CUDA_VISIBLE_DEVICES, 0)")
    parser.add_argument("--min-disk-gib", type=float, default=20.0, help="free disk needed under the run dir")
    parser.add_argument("--min-mem-gib", type=float, default=4.0, help="available memory needed")
    parser.add_argument("--stray-grace-s", type=float, default=10.0,
                        help="seconds to wait for leftover processes of this run to exit")
    parser.add_argument("--ignore-attempt", metavar="JOBID.RESTART",
                        help="processes of this attempt (their SLURM_JOB_ID.SLURM_RESTART_COUNT) are not strays")
    args = parser.parse_args(argv)
    report = run_checks(run_dir=args.run_dir, gpus=expected_gpus() if args.gpus is None else args.gpus,
                        min_disk_gib=args.min_disk_gib, min_mem_gib=args.min_mem_gib,
                        stray_grace_s=args.stray_grace_s, ignore_attempt=args.ignore_attempt)
    print(json.dumps(report), flush=True)
    for c in report["checks"]:
        if not c["ok"]:
            print(f"olmo-healthcheck: {report['node']}: {c['name']} FAILED: {c['detail']}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
