"""The submitit launcher: the same restart semantics as slurm/pretrain.sh, from Python.

    from olmo_train.launch.submitit_launcher import SubmititConfig, launch
    result = launch(["model=tiny", "trainer.max_steps=100"], SubmititConfig(executor="slurm", nodes=2), "runs/x")

Each job runs one `TrainTask` per node, which starts one torchrun per node (rendezvous on the first node's
NodeAddr) and writes the batch script's ledger events (`job_start`, `job_end`). submitit's preemption/timeout
signal (USR2) makes the task send USR1 to the trainer, wait for its checkpoint and exit 3, and requeue the job
(submitit's requeue on Slurm). A failed attempt is resubmitted by the supervising `launch()` while the run's failures
stay within `max_restarts`; the decision comes from the ledger, as in pretrain.sh.
"""

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil
import submitit

from olmo_train.errors import ConfigError
from olmo_train.launch.slurm_job import free_port_from, master_port, scontrol_show, slurm_time
from olmo_train.resilience.ledger import GoodputLedger, read_events
from olmo_train.resilience.requeue import decide

log = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class SubmititConfig:
    executor: Literal["slurm", "local"] = "slurm"
    """`local` runs the job on this machine (tests, debugging); `slurm` submits through sbatch."""
    folder: str = "submitit"
    """submitit's own files (pickles, logs), relative to the run directory unless absolute."""
    nodes: int = 1
    procs_per_node: int = 1
    """Training processes per node (torchrun --nproc-per-node): GPUs per node on GPU clusters."""
    gpus_per_node: int = 0
    timeout_min: int = 24 * 60
    signal_delay_s: int = 120
    """Seconds before the time limit at which submitit's USR2 arrives (the trainer then checkpoints)."""
    max_restarts: int = 5
    """Failed attempts resubmitted before giving up (preemptions do not count)."""
    preempt_grace_s: float = 600.0
    """Seconds the trainer gets to checkpoint and exit after a preemption signal."""
    partition: str | None = None
    slurm_parameters: dict[str, Any] = field(default_factory=dict)
    """Extra submitit `slurm_additional_parameters` (account, qos, exclude, ...)."""
    hardware: str = "cpu"
    entry: tuple[str, ...] = ("-m", "olmo_train.train.app")

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.procs_per_node < 1:
            raise ConfigError(f"nodes={self.nodes}, procs_per_node={self.procs_per_node}: both must be >= 1")
        if self.executor == "local" and self.nodes != 1:
            raise ConfigError(f"executor=local runs one node; got nodes={self.nodes}")
        if self.max_restarts < 0:
            raise ConfigError(f"max_restarts={self.max_restarts}: must be >= 0")


def _signal_tree(pid: int, sig: int) -> None:
    """`sig` to `pid` and all its descendants (torchrun ignores USR1; its workers act on it)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def _ignore_usr1() -> None:
    # torchrun would die of USR1; the trainer installs its own handler, which replaces SIG_IGN
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class TrainTask(submitit.helpers.Checkpointable):
    """One node of one attempt. Picklable; the running torchrun is not part of its state."""

    def __init__(self, overrides: list[str], run_dir: str, cfg: SubmititConfig) -> None:
        self.overrides, self.run_dir, self.cfg = list(overrides), str(run_dir), cfg
        self._proc: subprocess.Popen | None = None
        self._attempt = ""

    def __getstate__(self) -> dict[str, Any]:
        return {"overrides": self.overrides, "run_dir": self.run_dir, "cfg": self.cfg}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["overrides"], state["run_dir"], state["cfg"])

    def _ledger(self, env: submitit.JobEnvironment) -> GoodputLedger:
        return GoodputLedger(self.run_dir, self._attempt, self.cfg.hardware, self.cfg.nodes * self.cfg.procs_per_node,
                             rank=env.node)

    def __call__(self) -> dict[str, Any]:
        env = submitit.JobEnvironment()
        restart = os.environ.get("SLURM_RESTART_COUNT") or str(
            sum(1 for e in read_events(self.run_dir) if e["event"] == "job_start"
                and str(e.get("attempt", "")).startswith(f"{env.job_id}.")))
        self._attempt = f"{env.job_id}.{restart}"
        on_slurm = "SLURM_JOB_ID" in os.environ
        addr = "127.0.0.1"
        scheduler_start = time.time()
        if on_slurm:
            addr = scontrol_show("node", env.hostnames[0]).get("NodeAddr") or env.hostnames[0]
            scheduler_start = slurm_time(scontrol_show("job", os.environ["SLURM_JOB_ID"]).get("StartTime"))
        ledger = self._ledger(env)
        ledger.event("job_start", scheduler_start=scheduler_start, nodes=list(env.hostnames),
                     job_id=env.job_id, launcher="submitit")
        digits = "".join(c for c in env.job_id if c.isdigit()) or "0"
        port = master_port(digits, restart, os.environ.get("SLURM_CONF", ""))
        if env.num_nodes == 1:  # nodes would each probe differently; one node can pick a free port alone
            port = free_port_from(port)
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={env.num_nodes}",
               f"--nproc-per-node={self.cfg.procs_per_node}", f"--node-rank={env.node}", "--max-restarts=0",
               "--rdzv-backend=static", f"--master-addr={addr}", f"--master-port={port}",
               "--monitor-interval=0.2", *self.cfg.entry, *self.overrides, f"run.dir={self.run_dir}"]
        child_env = {**os.environ, "OLMO_TRAIN_ATTEMPT": self._attempt, "OLMO_TRAIN_LAUNCHER": "submitit"}
        self._proc = subprocess.Popen(cmd, env=child_env, preexec_fn=_ignore_usr1, start_new_session=True)
        while (code := self._proc.poll()) is None:  # poll, not wait(): a signal handler may poll too
            time.sleep(0.2)
        decision = decide(read_events(self.run_dir), self._attempt, code, max_restarts=self.cfg.max_restarts)
        ledger.event("job_end", exit_code=code, outcome=decision.outcome, decision=decision.action,
                     failures=decision.failures, reason=decision.reason, launcher="submitit")
        return {"attempt": self._attempt, "exit_code": code, "decision": decision.action,
                "outcome": decision.outcome}

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """submitit's preemption/timeout hook: the trainer checkpoints and exits 3, then the job is requeued."""
        env = submitit.JobEnvironment()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _signal_tree(proc.pid, signal.SIGUSR1)  # torchrun's workers sit in sessions of their own
            deadline = time.monotonic() + self.cfg.preempt_grace_s
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if proc.poll() is None:
                _signal_tree(proc.pid, signal.SIGKILL)
        self._ledger(env).event("job_end", exit_code=proc.poll() if proc else None, outcome="preempted",
                                decision="requeue", signalled=True, launcher="submitit")
        return submitit.helpers.DelayedSubmission(TrainTask(self.overrides, self.run_dir, self.cfg))


def make_executor(cfg: SubmititConfig, run_dir: str | Path) -> submitit.Executor:
    folder = Path(cfg.folder) if Path(cfg.folder).is_absolute() else Path(run_dir) / cfg.folder
    if cfg.executor == "local":
        executor: submitit.Executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=cfg.timeout_min, tasks_per_node=1, nodes=1)
        return executor
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params: dict[str, Any] = {"nodes": cfg.nodes, "tasks_per_node": 1, "timeout_min": cfg.timeout_min,
                              "slurm_signal_delay_s": cfg.signal_delay_s,
                              "slurm_additional_parameters": {"requeue": True, **cfg.slurm_parameters}}
    if cfg.gpus_per_node:
        params["gpus_per_node"] = cfg.gpus_per_node
    if cfg.partition:
        params["slurm_partition"] = cfg.partition
    executor.update_parameters(**params)
    return executor


def launch(overrides: list[str], cfg: SubmititConfig, run_dir: str | Path, *,
           on_submit: Any = None) -> dict[str, Any]:
    """Submits the run and supervises it until it finishes or fails for good; returns the last attempt's result.

    `on_submit(job)` is called with every submitted submitit job (tests use it to interrupt one).
    """
    run_dir = str(Path(run_dir).resolve())
    executor = make_executor(cfg, run_dir)
    while True:
        job = executor.submit(TrainTask(overrides, run_dir, cfg))
        log.info("submitted job %s for %s", job.job_id, run_dir)
        if on_submit is not None:
            on_submit(job)
        try:
            result = job.result()
        except Exception as exc:  # noqa: BLE001 - a crashed node, a requeue exit, a cancelled job
            result = _after_crash(job, run_dir, cfg, exc)
        if result["decision"] != "requeue":
            return result


def _after_crash(job: submitit.Job, run_dir: str, cfg: SubmititConfig, exc: Exception) -> dict[str, Any]:
    """The job ended without returning: take its last word from the ledger, or record the failure ourselves."""
    events = read_events(run_dir)
    ends = [e for e in events if e["event"] == "job_end" and str(e.get("attempt", "")).startswith(f"{job.job_id}.")]
    if ends:
        return {"attempt": ends[-1]["attempt"], "exit_code": ends[-1].get("exit_code"),
                "decision": ends[-1]["decision"], "outcome": ends[-1]["outcome"]}
    starts = [e for e in events if e["event"] == "job_start" and str(e.get("attempt", "")).startswith(f"{job.job_id}.")]
    attempt = starts[-1]["attempt"] if starts else f"{job.job_id}.0"
    decision = decide(events, attempt, 1, max_restarts=cfg.max_restarts)
    GoodputLedger(run_dir, attempt, cfg.hardware, cfg.nodes * cfg.procs_per_node).event(
        "job_end", exit_code=None, outcome=decision.outcome, decision=decision.action, failures=decision.failures,
        reason=f"{decision.reason}; submitit: {type(exc).__name__}: {str(exc)[:300]}", launcher="submitit")
    return {"attempt": attempt, "exit_code": None, "decision": decision.action, "outcome": decision.outcome}


def requeue_after_preemption(reason: str, *, rank: int, env: dict[str, str] | None = None) -> bool:
    """For Hydra's submitit launcher, where the trainer runs inside submitit's own task: after a preempted exit
    (checkpoint written), rank 0 requeues the Slurm job, as submitit's handler would have; the requeued job reruns
    the same pickled task and resumes from the checkpoint. Returns whether it requeued. Does nothing under
    pretrain.sh or this module's launcher (they requeue themselves)."""
    env = os.environ if env is None else env
    if (reason != "preempted" or rank != 0 or env.get("SUBMITIT_EXECUTOR") != "slurm"
            or env.get("OLMO_TRAIN_LAUNCHER") or not env.get("SLURM_JOB_ID")):
        return False
    done = subprocess.run(["scontrol", "requeue", env["SLURM_JOB_ID"]], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        log.error("scontrol requeue %s failed: %s", env["SLURM_JOB_ID"], done.stderr.strip())
    return done.returncode == 0
