"""The Python half of slurm/pretrain.sh: cluster profile, rendezvous address, ledger events of the batch script
and the requeue decision. No torch import (it runs in the batch shell between attempts).

    python -m olmo_train.launch.slurm_job profile --cluster h100          # shell assignments
    python -m olmo_train.launch.slurm_job job-start --run-dir RUN ...     # job_start event, MASTER_ADDR/PORT
    python -m olmo_train.launch.slurm_job job-end --run-dir RUN --exit-code N [--signalled] -- OVERRIDES
"""

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import zlib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import yaml

from olmo_train.launch.profile import load_profile
from olmo_train.resilience.config import ResilienceConfig
from olmo_train.resilience.ledger import GoodputLedger, attempt_id, read_events
from olmo_train.resilience.requeue import Decision, decide, previous_failures

_FIELD = re.compile(r"(\S+?)=(\S*)")


def scontrol_show(kind: str, name: str) -> dict[str, str]:
    """`scontrol show <kind> <name> -o` as a dict (values with spaces keep only their first word)."""
    out = subprocess.run(["scontrol", "show", kind, name, "-o"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    return dict(_FIELD.findall(out))


def slurm_time(value: str | None) -> float | None:
    """Slurm's local-time stamp (2026-11-23T13:37:22) as unix seconds; None for Unknown/None/empty."""
    if not value or value in ("Unknown", "None", "N/A"):
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S").timestamp()


def expand_nodelist(nodelist: str) -> list[str]:
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    return out.split()


def master_port(job_id: str, restart: str | None, salt: str = "") -> int:
    """A port per job and restart in 20000-39999 (a requeued attempt does not wait for the old one's TIME_WAIT);
    `salt` (the cluster's config path) separates clusters that share machines, like the emulated local ones."""
    return 20000 + (int(job_id) * 7 + int(restart or 0) + zlib.crc32(salt.encode())) % 20000


def free_port_from(port: int, tries: int = 50) -> int:
    """The first port from `port` on that can be bound here (the batch shell runs on the first node, where
    torchrun's rendezvous store will listen)."""
    for candidate in range(port, port + tries):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", candidate))
            except OSError:
                continue
            return candidate
    return port


def max_restarts(overrides: Sequence[str], run_dir: Path) -> int:
    """`resilience.max_restarts=N` among the overrides, else the run's resolved config, else the default."""
    for arg in overrides:
        if arg.lstrip("+").startswith("resilience.max_restarts="):
            return int(arg.split("=", 1)[1])
    config = run_dir / "config.yaml"
    if config.exists():
        value = ((yaml.safe_load(config.read_text()) or {}).get("resilience") or {}).get("max_restarts")
        if value is not None:
            return int(value)
    return ResilienceConfig().max_restarts


def profile_vars(cluster: str, config_dir: str) -> dict[str, object]:
    p = load_profile(cluster, config_dir)
    return {"PROFILE_NODES": p.nodes, "PROFILE_GPUS_PER_NODE": p.gpus_per_node,
            "PROFILE_PROCS_PER_NODE": p.ranks_per_node, "PROFILE_HARDWARE": p.name,
            "PROFILE_TIME_LIMIT": p.time_limit or "", "PROFILE_SBATCH": " ".join(p.sbatch)}


def _print_vars(values: dict[str, object]) -> None:
    for key, value in values.items():
        print(f"{key}={shlex.quote(str(value))}")


def cmd_profile(args: argparse.Namespace) -> int:
    _print_vars(profile_vars(args.cluster, args.config_dir))
    return 0


def cmd_job_start(args: argparse.Namespace) -> int:
    """One call at the start of each attempt (every second here is recovery time): the profile, the processes per
    node, the rendezvous address from `scontrol show node` (NodeAddr) and the `job_start` ledger event."""
    values = profile_vars(args.cluster, args.config_dir)
    job_id = os.environ["SLURM_JOB_ID"]
    job = scontrol_show("job", job_id)
    nodes = expand_nodelist(os.environ.get("SLURM_JOB_NODELIST") or job["NodeList"])
    addr = scontrol_show("node", nodes[0]).get("NodeAddr") or nodes[0]
    nproc = int(os.environ.get("OLMO_NPROC_PER_NODE") or os.environ.get("SLURM_GPUS_ON_NODE")
                or values["PROFILE_PROCS_PER_NODE"])
    world = len(nodes) * nproc
    GoodputLedger(args.run_dir, attempt_id(), str(values["PROFILE_HARDWARE"]), world).event(
        "job_start", scheduler_start=slurm_time(job.get("StartTime")), submit_time=slurm_time(job.get("SubmitTime")),
        restarts=int(job.get("Restarts", 0)), job_id=job_id, nodes=nodes)
    _print_vars({**values, "NPROC": nproc, "WORLD_SIZE": world,
                 "MASTER_ADDR": addr, "MASTER_PORT": free_port_from(
                     master_port(job_id, os.environ.get("SLURM_RESTART_COUNT"), os.environ.get("SLURM_CONF", "")))})
    return 0


def cmd_job_end(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    attempt = attempt_id()
    limit = max_restarts(args.overrides, run_dir)
    bad = [n for n in args.bad_nodes.split(",") if n]
    if args.unhealthy:  # found before training started: not a failure of the run
        failures = previous_failures(read_events(run_dir), attempt)
        decision = Decision("requeue", "unhealthy", failures, f"nodes {','.join(bad)} failed the health check")
    else:
        decision = decide(read_events(run_dir), attempt, args.exit_code, max_restarts=limit,
                          signalled=args.signalled)
    action = "resubmit" if bad and decision.action == "requeue" else decision.action
    ledger = GoodputLedger(run_dir, attempt, args.hardware, args.world_size)
    ledger.event("job_end", exit_code=args.exit_code, outcome=decision.outcome, decision=action,
                 failures=decision.failures, reason=decision.reason, bad_nodes=bad, signalled=args.signalled)
    print(f"pretrain.sh: {decision.reason} -> {action}", file=sys.stderr)
    print(action)
    return 0


def cmd_bad_nodes(args: argparse.Namespace) -> int:
    """Nodes whose health report says not ok, or that sent no report at all (srun could not reach them)."""
    reports = {}
    for line in Path(args.reports).read_text().splitlines() if Path(args.reports).exists() else []:
        try:
            record = json.loads(line[line.index("{"):]) if "{" in line else None
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "node" in record:
            reports[record["node"]] = bool(record.get("ok"))
    nodes = expand_nodelist(args.nodelist)
    print(",".join(n for n in nodes if not reports.get(n, False)))
    return 0


def resubmit_args(job: dict[str, str], excluded: list[str], job_id: str) -> list[str]:
    """sbatch options that recreate this job on other nodes: same size, time, GPUs, partition, log file."""
    args = [f"--nodes={job.get('NumNodes', '1').split('-')[0]}", f"--exclude={','.join(excluded)}",
            f"--job-name={job.get('JobName', 'olmo-train')}", f"--dependency=afterany:{job_id}"]
    for key, option in (("Partition", "--partition"), ("Account", "--account"), ("QOS", "--qos"),
                        ("StdOut", "--output")):
        if job.get(key) and job[key] not in ("(null)", "normal"):
            args.append(f"{option}={job[key]}")
    if job.get("TimeLimit") not in (None, "UNLIMITED", "Partition_Limit"):
        args.append(f"--time={job['TimeLimit']}")
    tres = job.get("TresPerNode", "")
    if tres.startswith("gres:"):
        tres = tres[len("gres:"):]
    if tres and tres != "(null)":
        args.append(f"--gres={tres}")
    return args


def cmd_resubmit(args: argparse.Namespace) -> int:
    """Adds the bad nodes to RUN/slurm/excluded_nodes and submits a job that continues the run without them
    (a running job's ExcNodeList cannot be changed: Slurm answers "Job is no longer pending execution")."""
    job_id = os.environ["SLURM_JOB_ID"]
    path = Path(args.run_dir) / "slurm" / "excluded_nodes"
    path.parent.mkdir(parents=True, exist_ok=True)
    excluded = sorted(set(path.read_text().split() if path.exists() else []) | set(args.exclude.split(",")) - {""})
    path.write_text("\n".join(excluded) + "\n")
    cmd = ["sbatch", "--parsable", *resubmit_args(scontrol_show("job", job_id), excluded, job_id), args.script,
           *args.overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        print(f"pretrain.sh: resubmission failed: {shlex.join(cmd)}: {out.stderr.strip()}", file=sys.stderr)
        return 1
    new_id = out.stdout.strip().split(";")[0]
    GoodputLedger(args.run_dir, attempt_id()).event("job_resubmitted", new_job_id=new_id, excluded=excluded)
    print(new_id)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m olmo_train.launch.slurm_job")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("profile", help="print the cluster profile as shell assignments")
    p.add_argument("--cluster", default="cpu")
    p.add_argument("--config-dir", default="configs")
    p = sub.add_parser("job-start", help="profile, rendezvous and the job_start event, as shell assignments")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--cluster", default="cpu")
    p.add_argument("--config-dir", default="configs")
    p = sub.add_parser("job-end", help="the requeue decision and the job_end event")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--hardware", default="cpu")
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--exit-code", type=int, required=True)
    p.add_argument("--signalled", action="store_true", help="the batch script received USR1/TERM")
    p.add_argument("--bad-nodes", default="", help="comma-separated nodes that failed the health check")
    p.add_argument("--unhealthy", action="store_true", help="the pre-training health check failed")
    p.add_argument("overrides", nargs="*", help="the run's Hydra overrides (after --)")
    p = sub.add_parser("bad-nodes", help="nodes without an ok health report")
    p.add_argument("--reports", required=True)
    p.add_argument("--nodelist", required=True)
    p = sub.add_parser("resubmit", help="continue the run in a new job that excludes bad nodes")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--script", required=True)
    p.add_argument("--exclude", required=True)
    p.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    commands = {"profile": cmd_profile, "job-start": cmd_job_start, "job-end": cmd_job_end,
                "bad-nodes": cmd_bad_nodes, "resubmit": cmd_resubmit}
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
