"""Per-rank random number generator states (torch CPU and CUDA, numpy, Python), one small file per rank.

Stored with `torch.save` as a dict of tensors, ints, floats and strings and read back with
`torch.load(weights_only=True)`: plain data only, no pickled code.
"""

import io
import logging
import random
from pathlib import Path
from typing import Any

import torch

from olmo_train.checkpoint.manifest import RNG_DIR
from olmo_train.errors import CheckpointError

try:
    import numpy as np
except ImportError:  # numpy is optional here: its state is simply not saved
    np = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


def rng_file(root: Path, rank: int) -> Path:
    return root / RNG_DIR / f"rank{rank:05d}.pt"


def rng_state() -> dict[str, Any]:
    """This process's RNG states as plain data (tensors, ints, floats, strings)."""
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {"torch_cpu": torch.get_rng_state(), "python_version": py_version,
                             "python_state": torch.tensor(py_state, dtype=torch.int64), "python_gauss": py_gauss}
    if np is not None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state.update(numpy_kind=kind, numpy_keys=torch.from_numpy(keys.astype(np.int64)), numpy_pos=int(pos),
                     numpy_has_gauss=int(has_gauss), numpy_gauss=float(gauss))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], source: Path) -> None:
    torch.set_rng_state(state["torch_cpu"])
    random.setstate((state["python_version"], tuple(state["python_state"].tolist()), state["python_gauss"]))
    if np is not None and "numpy_keys" in state:
        np.random.set_state((state["numpy_kind"], state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                             state["numpy_has_gauss"], state["numpy_gauss"]))
    cuda = state.get("torch_cuda")
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
    elif cuda:
        log.warning("%s holds CUDA RNG states but CUDA is not available here; they are not restored", source)


def save_rng(root: Path, rank: int) -> Path:
    """Writes this process's RNG states to `root/rng/rank<r>.pt` (not fsync'd: the caller syncs it later, off
    the training thread) and returns the path."""
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    path = rng_file(root, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def load_rng(root: Path, rank: int) -> None:
    """Restores this process's RNG states from `root/rng/rank<r>.pt`."""
    path = rng_file(root, rank)
    try:
        state = torch.load(path, weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} is missing: the checkpoint holds no RNG state for rank {rank}") from e
    except Exception as e:  # noqa: BLE001 - weights_only refuses anything but plain data
        raise CheckpointError(f"{path} is not a plain RNG state file ({e}); the checkpoint is damaged") from e
    set_rng_state(state, path)
