"""Per-rank random number generator states (torch CPU and CUDA, numpy, Python) as safetensors + JSON metadata."""

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from olmo_train.checkpoint.manifest import RNG_DIR, fsync_path
from olmo_train.errors import CheckpointError

log = logging.getLogger(__name__)


def rng_file(root: Path, rank: int) -> Path:
    return root / RNG_DIR / f"rank{rank:05d}.safetensors"


def save_rng(root: Path, rank: int) -> None:
    """Writes this process's RNG states to `root/rng/rank<r>.safetensors` and fsyncs it."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    tensors = {
        "torch_cpu": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "python_state": torch.tensor(py_state, dtype=torch.int64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda{i}"] = state
    scalars = {"numpy_kind": np_kind, "numpy_pos": int(np_pos), "numpy_has_gauss": int(np_has_gauss),
               "numpy_gauss": float(np_gauss), "python_version": py_version, "python_gauss": py_gauss}
    path = rng_file(root, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"scalars": json.dumps(scalars)})
    fsync_path(path)


def load_rng(root: Path, rank: int) -> None:
    """Restores this process's RNG states from `root/rng/rank<r>.safetensors` (no pickle involved)."""
    path = rng_file(root, rank)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint holds no RNG state for rank {rank}")
    with safe_open(str(path), framework="pt") as f:
        scalars = json.loads(f.metadata()["scalars"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    torch.set_rng_state(tensors["torch_cpu"])
    np.random.set_state((scalars["numpy_kind"], tensors["numpy_keys"].numpy().astype(np.uint32),
                         scalars["numpy_pos"], scalars["numpy_has_gauss"], scalars["numpy_gauss"]))
    random.setstate((scalars["python_version"], tuple(tensors["python_state"].tolist()), scalars["python_gauss"]))
    cuda_states = [tensors[f"torch_cuda{i}"] for i in range(len(tensors)) if f"torch_cuda{i}" in tensors]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[:torch.cuda.device_count()])
    elif cuda_states:
        log.warning("%s holds CUDA RNG states but CUDA is not available here; they are not restored", path)
