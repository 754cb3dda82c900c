"""`distributed=deepspeed`: a DeepSpeed engine (ZeRO 1, 2 or 3) built from the same config as the other backends.

Same optimizer (torch AdamW over `param_groups`, DeepSpeed calls it on its flat fp32 partitions), same learning
rate (set on the engine's param groups before the accumulation boundary), clipping set explicitly
(`gradient_clipping`; DeepSpeed would otherwise clip at 1.0 silently), no loss scaling by the accumulation steps
(the loop already normalises by the global token count).

Checkpoints: DeepSpeed's own `save_checkpoint` writes `<step dir>/ds/` inside the checkpoint manager's commit
protocol (`save_with`), with the train state beside it in `train.json` and per-rank RNG states. A different world
size on resume goes through DeepSpeed's universal checkpoint: rank 0 converts once (`ds_to_universal`, cached in
RUN/checkpoints/universal/step<N>/), and the engine is built with `checkpoint.load_universal`.
"""

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from olmo_train.distributed.backend import Backend, BuildSpec, build_meta_model, count, materialise
from olmo_train.distributed.config import DeepSpeedConfig
from olmo_train.errors import CheckpointError, EnvironmentSetupError
from olmo_train.model.olmo_hybrid.parallelize import apply_activation_checkpointing
from olmo_train.train.optim import build_adamw, param_groups

log = logging.getLogger(__name__)

DS_TAG = "ds"


def deepspeed_config(cfg: DeepSpeedConfig, spec: BuildSpec, *, load_universal: bool) -> dict[str, Any]:
    """The engine's JSON config, derived from ours (nothing in it is set anywhere else)."""
    return {
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": spec.accum_steps,
        "train_batch_size": spec.micro_batch_size * spec.accum_steps * spec.world_size,
        "gradient_clipping": spec.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage, "reduce_bucket_size": cfg.reduce_bucket_size,
                              "overlap_comm": cfg.overlap_comm, "contiguous_gradients": True},
        "bf16": {"enabled": cfg.param_dtype == "bfloat16"},
        "communication_data_type": "fp32" if cfg.reduce_dtype == "float32" else "bf16",
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "checkpoint": {"load_universal": load_universal},
    }


class DeepSpeedBackend(Backend):
    def __init__(self, cfg: DeepSpeedConfig, spec: BuildSpec):
        if spec.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        try:
            import deepspeed
        except ImportError as exc:
            raise EnvironmentSetupError(f"distributed=deepspeed needs the deepspeed package: {exc}") from exc
        self.cfg, self.spec = cfg, spec
        self.universal = spec.saved_world_size is not None and spec.saved_world_size != spec.world_size
        model = build_meta_model(spec.model_config)
        count(self, model, spec.seq_len)
        materialise(model, spec.device, spec.seed)
        apply_activation_checkpointing(model, cfg.activation_checkpointing)
        optimizer = build_adamw(param_groups(model, spec.optimizer), spec.optimizer)
        self._module = model
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(cfg, spec, load_universal=self.universal))

    @property
    def module(self) -> nn.Module:
        return self._module

    def set_lr(self, lr: float) -> None:
        for group in self.model.optimizer.param_groups:
            group["lr"] = lr

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss, scale_wrt_gas=False)
        self.model.step()  # a no-op until the accumulation boundary, where it clips and steps

    def finish_step(self) -> torch.Tensor:
        norm = self.model.get_global_grad_norm()
        return torch.as_tensor(0.0 if norm is None else norm, dtype=torch.float32)

    # ---- checkpoints ---------------------------------------------------------------------------------------

    def save(self, manager: Any, step: int, train: dict, *, ephemeral: bool) -> None:
        from deepspeed.checkpoint.constants import (UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                                    UNIVERSAL_CHECKPOINT_VERSION_VALUE)

        def write(tmp_dir: Path) -> None:
            # Pure data parallelism: no tensor-parallel merge patterns, only the format version that
            # ds_to_universal requires to convert ZeRO 1/2 checkpoints (ZeRO-3 ones carry their own).
            info = {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
            self.model.save_checkpoint(str(tmp_dir), tag=DS_TAG, client_state=info, save_latest=False)

        manager.save_with(step, write, train=train, ephemeral=ephemeral)

    def load(self, manager: Any, path: Path) -> dict:
        path = Path(path)

        def read(path: Path) -> None:
            if not (path / DS_TAG).is_dir():
                raise CheckpointError(f"checkpoint {path} was not written by distributed=deepspeed (no {DS_TAG}/ "
                                      "inside); resume it with the backend that wrote it (fsdp2 or single)")
            load_dir, tag = (self._universal_dir(path), "universal") if self.universal else (path, DS_TAG)
            # DeepSpeed's universal load (ZeRO-3, 0.19.8) copies group 0's hyper-parameters into every group,
            # which would put weight decay on the embedding: keep our groups' own settings.
            hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.model.optimizer.param_groups]
            loaded, _ = self.model.load_checkpoint(str(load_dir), tag=tag, load_optimizer_states=True,
                                                   load_lr_scheduler_states=False)
            if loaded is None:
                raise CheckpointError(f"DeepSpeed found nothing to load in {load_dir / tag}")
            for group, own in zip(self.model.optimizer.param_groups, hyper, strict=True):
                group.update(own)
            _unshare_adam_steps(self.model.optimizer)

        return manager.load_with(path, read)

    def _universal_dir(self, path: Path) -> Path:
        """Converts `path/ds` to a universal checkpoint once (rank 0), cached beside the checkpoints."""
        out = path.parent / "universal" / path.name
        rank = dist.get_rank() if dist.is_initialized() else 0
        if rank == 0 and not (out / "universal" / "zero").is_dir():
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)  # left by a killed conversion
            cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                   str(path / DS_TAG), "--output_folder", str(tmp / "universal"), "--num_extract_workers", "1",
                   "--num_merge_workers", "1", "--no_strict"]
            log.info("converting %s to a DeepSpeed universal checkpoint for world size %d", path,
                     self.spec.world_size)
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if done.returncode:
                raise CheckpointError(f"ds_to_universal failed on {path / DS_TAG}:\n{done.stderr[-2000:]}")
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, out)
        if dist.is_initialized():
            dist.barrier()
        return out

    def load_full_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        import deepspeed

        params = list(self._module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0, enabled=self.cfg.zero_stage == 3):
            if self.cfg.zero_stage < 3 or not dist.is_initialized() or dist.get_rank() == 0:
                self._module.load_state_dict(state_dict, strict=True)
        self.model.optimizer.refresh_fp32_params()  # the optimizer's fp32 master copy follows the new weights


def _unshare_adam_steps(zero_optimizer: Any) -> None:
    """DeepSpeed's ZeRO-3 universal load puts one `step` tensor object into the state of every param group; torch
    AdamW increments each group's step in place, so with two groups the shared counter advanced twice per step and
    Adam's bias correction drifted (measured 6.6e-4 relative loss drift over 4 steps). Give each state its own."""
    inner = getattr(zero_optimizer, "optimizer", zero_optimizer)
    for state in inner.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
