"""`olmo-export-hf CHECKPOINT OUT_DIR`: a training checkpoint -> a transformers-loadable `olmo_hybrid` directory.

CHECKPOINT is a checkpoint directory (`RUN/checkpoints/step<N>`), a run's `checkpoints/` directory or a run
directory (then its newest good checkpoint). The model's full state dict is read on one process, whatever world
size saved it (DCP reassembles the shards; no pickled code runs), converted with `olmo_train.model.hf` using the
model config recorded in the checkpoint's manifest, and written as config.json + safetensors. DeepSpeed ZeRO-1/2
checkpoints (written through `CheckpointManager.save_with`) export their module weights, read with
`weights_only=True`.
"""

import argparse
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from olmo_train.checkpoint import layout
from olmo_train.checkpoint.manifest import verify
from olmo_train.checkpoint.safe_reader import SafeFileSystemReader, SafeLoadPlanner, read_dcp_metadata
from olmo_train.errors import CheckpointError, OlmoTrainError

log = logging.getLogger(__name__)
MODEL_PREFIX = "model."
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def find_checkpoint(path: Path) -> Path:
    """`path` itself when it is a checkpoint, else the newest good checkpoint of a checkpoints or run dir."""
    if (path / "manifest.json").is_file():
        return path
    for candidate in (path, path / "checkpoints"):
        if layout.committed_steps(candidate):
            found = layout.newest_good(candidate)
            if found is not None:
                return found
            raise CheckpointError(f"every checkpoint in {candidate} is corrupt; nothing to export")
    raise CheckpointError(f"{path} is not a checkpoint (no manifest.json) and holds no committed checkpoints; "
                          "pass RUN/checkpoints/step<N>, RUN/checkpoints or RUN")


def read_model_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state dict of a DCP checkpoint, on CPU, in the saved dtypes, our names."""
    metadata = read_dcp_metadata(checkpoint)
    state = {key: torch.empty(tuple(item.size), dtype=item.properties.dtype)
             for key, item in metadata.state_dict_metadata.items()
             if key.startswith(MODEL_PREFIX) and isinstance(item, TensorStorageMetadata)}
    if not state:
        raise CheckpointError(f"checkpoint {checkpoint} holds no '{MODEL_PREFIX}*' tensors; it was not saved with a "
                              "'model' entry (olmo_train.checkpoint.training_state)")
    dcp.load(state, storage_reader=SafeFileSystemReader(str(checkpoint)), planner=SafeLoadPlanner(), no_dist=True)
    return {key.removeprefix(MODEL_PREFIX): value for key, value in state.items()}


def read_deepspeed_model_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The module weights of a DeepSpeed ZeRO-1/2 checkpoint written through `save_with` (any tag directory),
    in the engine's dtype (bf16 when trained in bf16: the fp32 master copy lives in the optimizer partitions)."""
    files = sorted(checkpoint.glob("*/mp_rank_*_model_states.pt"))
    if len(files) != 1:
        raise CheckpointError(f"checkpoint {checkpoint} is not a DeepSpeed checkpoint this exporter reads: expected "
                              f"one */mp_rank_00_model_states.pt, found {[str(f) for f in files]}")
    try:
        states = torch.load(files[0], map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only refuses anything but plain data
        raise CheckpointError(f"{files[0]} cannot be read as plain data ({e})") from e
    module = states.get("module") or {}
    shapes = {k: tuple(v) for group in states.get("param_shapes") or [] for k, v in group.items()}
    stage = (states.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 0)
    partitioned = [k for k, shape in shapes.items() if k in module and tuple(module[k].shape) != shape]
    if stage >= 3 or partitioned or not module:
        raise CheckpointError(
            f"{files[0]} holds ZeRO-{stage} partitioned weights, not full ones; exporting ZeRO-3 checkpoints is not "
            "supported yet. Resume it with distributed=deepspeed and save once with distributed=fsdp2 or single "
            "(or run DeepSpeed's zero_to_fp32.py on it if you trust the files), then export")
    return {k: v for k, v in module.items() if isinstance(v, torch.Tensor)}


def model_config_of(manifest: dict[str, Any], checkpoint: Path) -> Any:
    from olmo_train.model import OlmoHybridConfig

    config = manifest.get("model_config")
    if not config:
        raise CheckpointError(f"checkpoint {checkpoint} records no model_config in its manifest; it was saved by a "
                              "CheckpointManager without model_config=, so the model cannot be rebuilt for export")
    return OlmoHybridConfig(**config)


def export_hf(checkpoint: str | Path, out_dir: str | Path, *, dtype: str | None = None,
              overwrite: bool = False) -> Path:
    """Writes the model of `checkpoint` to `out_dir` as a transformers `olmo_hybrid` checkpoint; returns the
    checkpoint directory used. `dtype` ("float32", "bfloat16", "float16") converts; None keeps the saved one."""
    from olmo_train.model.hf import save_state_dict_hf

    path = find_checkpoint(Path(checkpoint))
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"output directory {out} is not empty; choose a new one or pass --overwrite")
    manifest = verify(path)
    cfg = model_config_of(manifest, path)
    state = read_model_state_dict(path) if manifest["kind"] == "dcp" else read_deepspeed_model_state_dict(path)
    if dtype is not None:
        state = {k: v.to(_DTYPES[dtype]) for k, v in state.items()}
    _write_atomically(out, lambda tmp: save_state_dict_hf(state, cfg, tmp))
    log.info("exported %s (step %s) to %s", path, manifest.get("step"), out)
    return path


def _write_atomically(out: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) into a sibling temp dir, then rename it to `out`: a failed export leaves no half directory."""
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        if out.exists():
            shutil.rmtree(out)  # empty, or the caller asked to overwrite
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="olmo-export-hf", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="RUN/checkpoints/step<N>, RUN/checkpoints or RUN (newest good one)")
    parser.add_argument("out_dir", help="directory to write config.json and safetensors to")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default=None, help="convert weights (default: as saved)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty out_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        used = export_hf(args.checkpoint, args.out_dir, dtype=args.dtype, overwrite=args.overwrite)
    except OlmoTrainError as e:
        print(f"olmo-export-hf: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out_dir} from {used}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
