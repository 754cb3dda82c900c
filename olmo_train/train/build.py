"""Builds a Trainer from a validated Config: process group, ledger, watchdog, config dump, checkpoint manager,
backend, data loader, resume, callbacks. Each part is built once, here, and handed to the trainer."""

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from olmo_train.checkpoint import CheckpointManager, checkpoint_kind
from olmo_train.checkpoint.manifest import MANIFEST, read_manifest
from olmo_train.checkpoint.state import describe_config_diff
from olmo_train.data import build_train_loader
from olmo_train.distributed.backend import Backend, BuildSpec, build_backend
from olmo_train.distributed.env import DistEnv, init_distributed, shutdown_distributed
from olmo_train.errors import CheckpointError
from olmo_train.logging.jsonl import read_metrics
from olmo_train.logging.secrets import redact
from olmo_train.logging.wandb_run import WandbRun, load_or_create_run_id, resolve_mode
from olmo_train.resilience.faults import FAULT_ENV
from olmo_train.resilience.ledger import GoodputLedger, attempt_id
from olmo_train.resilience.signals import PreemptionHandler
from olmo_train.resilience.watchdog import Watchdog
from olmo_train.train import callbacks as cb
from olmo_train.train.config import SCHEMA_VERSION, Config, batch_layout, to_container
from olmo_train.train.metrics import MetricsTracker
from olmo_train.train.trainer import Trainer

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Parts:
    trainer: Trainer
    manager: CheckpointManager
    ledger: GoodputLedger
    watchdog: Watchdog | None


def build_trainer(cfg: Config, *, setup_logging: Callable[[int], None] = lambda rank: None) -> Parts:
    denv = init_distributed(cfg.cluster.device, cfg.resilience.collective_timeout_s, cfg.cluster.nccl_env,
                            always=cfg.distributed.backend != "single")
    setup_logging(denv.rank)
    device = torch.device("cuda", denv.local_rank) if cfg.cluster.device == "cuda" else torch.device("cpu")
    run_dir = Path(cfg.run.dir)
    ledger = GoodputLedger(run_dir, attempt_id(), hardware=cfg.cluster.name, world_size=denv.world_size,
                           rank=denv.rank, step_interval=cfg.resilience.ledger_step_interval)
    ledger.event("attempt_start", step=None)
    watchdog = None
    if "watchdog" in cfg.trainer.callbacks:
        r = cfg.resilience
        watchdog = Watchdog(r.watchdog_timeout_s, r.watchdog_startup_timeout_s, ledger=ledger,
                            exit_code=r.hang_exit_code).start()
    logged_through = max((int(m["step"]) for m in read_metrics(run_dir / "metrics.jsonl")), default=-1)
    if denv.is_main:
        write_config(run_dir, cfg)
    instances, accum = batch_layout(cfg, denv.world_size)
    manager = CheckpointManager(cfg.checkpoint, run_dir, model_config=cfg.model)
    resume = manager.resume_path()
    kind, saved_ws = _describe_resume(resume, cfg)
    backend = build_backend(cfg.distributed, BuildSpec(
        model_config=cfg.model, optimizer=cfg.trainer.optimizer, grad_clip=cfg.trainer.grad_clip, seed=cfg.seed,
        device=device, world_size=denv.world_size, micro_batch_size=cfg.micro_batch_size, accum_steps=accum,
        seq_len=cfg.trainer.seq_len, saved_world_size=saved_ws))
    loader = build_train_loader(cfg.data, seq_len=cfg.trainer.seq_len, global_batch_size=instances,
                                micro_batch_size=cfg.micro_batch_size, rank=denv.rank,
                                world_size=denv.world_size, seed=cfg.seed, device=device,
                                vocab_size=cfg.model.vocab_size)
    ledger.event("init_done", step=None)
    train = _resume(cfg, backend, manager, loader, resume, kind)
    if resume is not None:
        ledger.event("checkpoint_loaded", step=int(train.get("step", 0)), path=str(resume), kind=kind)
    own = resume is not None and resume.parent.resolve() == manager.dir.resolve()
    run_id = load_or_create_run_id(run_dir, train.get("wandb_run_id") if own else None) if denv.is_main else ""
    tracker = MetricsTracker(world_size=denv.world_size, flops_per_token=backend.flops_per_token,
                             peak_flops=cfg.cluster.peak_flops, z_loss_weight=cfg.trainer.z_loss, device=device)
    trainer = Trainer(cfg=cfg, backend=backend, loader=loader, manager=manager, tracker=tracker, device=device,
                      world_size=denv.world_size, rank=denv.rank, step=int(train.get("step", 0)),
                      tokens=int(train.get("tokens", 0)), wandb_run_id=run_id)
    trainer.last_saved_step = trainer.step if own else -1
    trainer.callbacks = _callbacks(cfg, denv, run_dir, run_id, ledger, watchdog, logged_through)
    log.info("world %d x micro-batch %d x %d accumulation = %d sequences of %d tokens per step; %s params; "
             "starting at step %d", denv.world_size, cfg.micro_batch_size, accum, instances, cfg.trainer.seq_len,
             f"{backend.num_params:,}", trainer.step)
    return Parts(trainer=trainer, manager=manager, ledger=ledger, watchdog=watchdog)


def _describe_resume(resume: Path | None, cfg: Config) -> tuple[str | None, int | None]:
    """(kind, world size that saved it) of the checkpoint to resume; CheckpointError when the backend cannot
    read it."""
    if resume is None:
        return None, None
    kind = checkpoint_kind(resume)
    saved_ws = read_manifest(resume).get("world_size") if (resume / MANIFEST).is_file() else None
    is_ds = cfg.distributed.backend == "deepspeed"
    if (kind == "custom") != is_ds and kind != "hf":
        writer = "distributed=deepspeed" if kind == "custom" else "distributed=fsdp2 or single"
        raise CheckpointError(f"checkpoint {resume} was written by {writer}, but this run uses "
                              f"distributed={cfg.distributed.backend}; resume with the backend that wrote it, or "
                              "export it (olmo-export-hf) and continue from the HF weights via checkpoint.load_path")
    return kind, saved_ws


def _resume(cfg: Config, backend: Backend, manager: CheckpointManager, loader: Any, resume: Path | None,
            kind: str | None) -> dict:
    """Loads `resume` into the backend (and the loader's position); returns its train state ({} = fresh)."""
    if resume is None:
        return {}
    if kind == "hf":
        from olmo_train.model import hf

        hf_config = hf.from_hf_config(json.loads((resume / "config.json").read_text()))
        diff = describe_config_diff(_shape_fields(hf_config), _shape_fields(cfg.model))
        if diff:
            raise CheckpointError(f"HF checkpoint {resume} is another model than model=...{diff}")
        backend.load_full_weights(hf.load_hf(resume, dtype=torch.float32).state_dict())
        return {}
    train = backend.load(manager, resume)
    loader.load_state_dict(train["data"])
    return train


SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "layer_pattern", "mlp_hidden", "attn_n_heads", "attn_n_kv_heads",
                "attn_head_dim", "gdn_n_heads", "gdn_n_v_heads", "gdn_head_k_dim", "gdn_head_v_dim", "gdn_conv_size")


def _shape_fields(model_config: Any) -> dict:
    """The fields that decide parameter shapes (init-only and metadata fields may differ freely)."""
    return {name: getattr(model_config, name) for name in SHAPE_FIELDS}


def _callbacks(cfg: Config, denv: DistEnv, run_dir: Path, run_id: str, ledger: GoodputLedger,
               watchdog: Watchdog | None, logged_through: int) -> list[cb.Callback]:
    def make_wandb(mode: str) -> WandbRun:
        return WandbRun(cfg.logger.wandb, run_dir=run_dir, run_id=run_id, name=cfg.run.name,
                        config=to_container(cfg), skip_through_step=logged_through, mode=mode)

    factories = {
        "metrics": lambda: cb.MetricsCallback(run_dir / "metrics.jsonl", rank=denv.rank),
        "wandb": lambda: cb.WandbCallback(make_wandb, rank=denv.rank, mode=resolve_mode(cfg.logger.wandb.mode)),
        "goodput": lambda: cb.GoodputCallback(ledger),
        "preemption": lambda: cb.PreemptionCallback(PreemptionHandler(cfg.resilience.signal_check_interval,
                                                                      ledger=ledger)),
        "watchdog": lambda: cb.WatchdogCallback(watchdog),
        "checkpoint": lambda: cb.CheckpointCallback(),
    }
    callbacks = [factories[name]() for name in cfg.trainer.callbacks]
    if os.environ.get(FAULT_ENV):  # test-only faults (hang, kill, crash, preempt at a given step)
        callbacks.insert(0, cb.FaultInjectionCallback(run_dir, rank=denv.rank))
    return callbacks


def write_config(run_dir: Path, cfg: Config) -> Path:
    """RUN/config.yaml (this attempt's resolved config, secrets masked) and its copy RUN/config.<n>.yaml."""
    run_dir.mkdir(parents=True, exist_ok=True)
    n = len(list(run_dir.glob("config.[0-9]*.yaml")))
    text = f"# olmo-train config, schema version {SCHEMA_VERSION}, attempt {n}\n"
    text += OmegaConf.to_yaml(OmegaConf.create(redact(to_container(cfg))))
    (run_dir / f"config.{n}.yaml").write_text(text)
    tmp = run_dir / "config.yaml.tmp"
    tmp.write_text(text)
    tmp.replace(run_dir / "config.yaml")
    return run_dir / "config.yaml"


def shutdown(parts: Parts | None) -> None:
    """Waits for the pending checkpoint, stops the watchdog, leaves the process group."""
    try:
        if parts is not None:
            parts.manager.close()
    finally:
        if parts is not None and parts.watchdog is not None:
            parts.watchdog.stop()
        shutdown_distributed()
