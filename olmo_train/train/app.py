"""`olmo-train`: the Hydra app. Composes and validates the config, builds every part once, trains, exits with the
code of docs/interfaces.md (0 finished, 3 preempted, 1 failed, 4 hang — the watchdog exits by itself)."""

import logging
import os
import re
import sys
import traceback
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from olmo_train.errors import ConfigError, OlmoTrainError
from olmo_train.train.config import Config, register_configs

log = logging.getLogger("olmo_train")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
_exit_code = 0  # stays 0 when Hydra answers by itself (--help, --cfg job)


def to_config(cfg: DictConfig) -> Config:
    """The composed DictConfig as validated dataclasses (runs every __post_init__). ConfigError for an invalid
    value or a key the schema lacks (`+trainer.foo=1` passes composition and fails here, thanks to slots)."""
    try:
        return OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - OmegaConf wraps __post_init__ errors; slots give AttributeError
        cause = exc.__cause__ if isinstance(exc.__cause__, ConfigError) else None
        if cause is not None:
            raise cause from None
        unknown = re.search(r"'(\w+)' object has no attribute '(\w+)'", str(exc))
        if isinstance(exc, AttributeError) and unknown:
            raise ConfigError(f"unknown config key {unknown.group(2)!r} in {unknown.group(1)}: a '+' override added "
                              "a key the schema does not have; check its spelling and section") from None
        raise ConfigError(f"invalid config: {exc}") from exc


def _setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.getLogger().setLevel(level)
    for name in ("olmo_train", "torch.distributed", "DeepSpeed"):
        logging.getLogger(name).setLevel(level)
    if rank != 0:
        os.environ.setdefault("WANDB_SILENT", "true")


def run(cfg: Config) -> int:
    """Builds and trains; returns the exit code."""
    from olmo_train.train.build import build_trainer, shutdown

    parts = None
    try:
        parts = build_trainer(cfg, setup_logging=_setup_logging)
        reason = parts.trainer.fit()
        if reason == "preempted":  # under Hydra's submitit launcher: requeue the job (elsewhere a no-op)
            from olmo_train.launch.submitit_launcher import requeue_after_preemption

            requeue_after_preemption(reason, rank=parts.trainer.rank)
        code = {"finished": 0, "preempted": 3}.get(reason, 1)
        log.info("training %s at step %d; exit code %d", reason, parts.trainer.step, code)
        return code
    except OlmoTrainError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        if parts is None:
            _write_failure(cfg, exc)
        return 1
    except Exception as exc:  # noqa: BLE001 - any crash ends the attempt with code 1 and its traceback
        log.error("training failed: %s\n%s", exc, traceback.format_exc())
        return 1
    finally:
        shutdown(parts)


def _write_failure(cfg: Config, exc: BaseException) -> None:
    """Before the trainer exists, print the error plainly (Hydra's own reporter would swallow the message)."""
    print(f"olmo-train: {type(exc).__name__}: {exc}", file=sys.stderr)


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="config")
def _hydra_main(dcfg: DictConfig) -> None:
    global _exit_code
    try:
        cfg = to_config(dcfg)
    except ConfigError as exc:
        print(f"olmo-train: ConfigError: {exc}", file=sys.stderr)
        _exit_code = 1
        return
    _exit_code = run(cfg)


def main() -> None:
    register_configs()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    _hydra_main()
    sys.exit(_exit_code)


if __name__ == "__main__":
    main()
