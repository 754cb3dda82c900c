"""W&B: one run per training run, continued across attempts; mode from the key's presence; no secrets."""

import logging
import os
import uuid
from pathlib import Path
from typing import Any

from olmo_train.logging.config import WandbConfig
from olmo_train.logging.secrets import redact

log = logging.getLogger(__name__)

RUN_ID_FILE = Path("wandb") / "run_id"


def resolve_mode(mode: str, env: dict[str, str] | None = None) -> str:
    """'auto' -> 'online' with WANDB_API_KEY set, else 'offline'; other modes pass through."""
    env = os.environ if env is None else env
    if mode == "auto":
        return "online" if env.get("WANDB_API_KEY") else "offline"
    return mode


def load_or_create_run_id(run_dir: Path, from_checkpoint: str | None = None) -> str:
    """The run's W&B id: from the checkpoint's train state, else RUN/wandb/run_id, else a new one (saved)."""
    path = run_dir / RUN_ID_FILE
    run_id = from_checkpoint or (path.read_text().strip() if path.exists() else "") or uuid.uuid4().hex[:12]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text().strip() != run_id:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(run_id + "\n")
        os.replace(tmp, path)
    return run_id


class WandbRun:
    """A thin wrapper that only rank 0 builds. `log` drops steps W&B already holds from an earlier attempt."""

    def __init__(self, cfg: WandbConfig, *, run_dir: Path, run_id: str, name: str, config: dict[str, Any],
                 skip_through_step: int = -1, mode: str | None = None):
        import wandb  # imported here: startup cost only where W&B is used

        self.mode = mode or resolve_mode(cfg.mode)
        self.skip_through_step = skip_through_step
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=cfg.group, tags=list(cfg.tags), name=name,
            id=run_id, resume="allow", dir=str(run_dir), mode=self.mode, config=redact(config),
            settings=wandb.Settings(save_code=False, console="off", x_disable_stats=True,
                                    x_disable_machine_info=True))
        log.info("W&B run %s (%s) in %s", run_id, self.mode, run_dir / "wandb")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if step <= self.skip_through_step:
            return
        self.run.log({k: v for k, v in metrics.items() if v is not None and k != "step"}, step=step)

    def finish(self, exit_code: int) -> None:
        self.run.finish(exit_code=exit_code)
