"""What `CheckpointManager.save/load` take as `state`, and the shape check done before a load.

`state` is a dict. `state["train"]` (optional) is a JSON-able dict saved as `train.json`; every other entry is
DCP-saveable: a nested dict of tensors / DTensors (e.g. from `torch.distributed.checkpoint.state_dict`), or a
`Stateful` object. `training_state(model, optimizer)` gives the recommended entries: `model` and `optim` wrappers
that go through `get_model_state_dict` / `set_optimizer_state_dict`, so FSDP2-sharded, compiled and plain models
all save under the same parameter names and load back in place.
"""

from collections.abc import Mapping
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.checkpoint.stateful import Stateful

from olmo_train.errors import CheckpointError

TRAIN_KEY = "train"


class ModelState(Stateful):
    """A model as a DCP entry: its full-name state dict (DTensor shards under FSDP2), loaded back in place."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        return get_model_state_dict(self.model)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_model_state_dict(self.model, state_dict)


class OptimizerState(Stateful):
    """An optimizer as a DCP entry, keyed by parameter names (so it reshards across world sizes)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state_dict)


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                   train: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `state` dict for `CheckpointManager.save/load`: {"model", "optim" (if given), "train" (if given)}."""
    state: dict[str, Any] = {"model": ModelState(model)}
    if optimizer is not None:
        state["optim"] = OptimizerState(model, optimizer)
    if train is not None:
        state[TRAIN_KEY] = train
    return state


def resolve(state: Mapping[str, Any]) -> dict[str, Any]:
    """The DCP part of `state` (everything but "train") with Stateful objects replaced by their state dicts."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key == TRAIN_KEY:
            continue
        out[key] = value.state_dict() if isinstance(value, Stateful) else value
    return out


def flatten_tensors(tree: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """{dotted key: tensor} of every tensor in nested dicts, named the way DCP names them."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    out: dict[str, torch.Tensor] = {}
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            out.update(flatten_tensors(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def check_fits(checkpoint: str, saved: Mapping[str, Any], wanted: Mapping[str, torch.Tensor],
               config_diff: str) -> None:
    """CheckpointError naming the first tensor of `wanted` that is missing from, or shaped differently in,
    `saved` ({key: {"shape": [...]}}, the manifest's `tensors`)."""
    for key, tensor in wanted.items():
        if key not in saved:
            raise CheckpointError(
                f"checkpoint {checkpoint} has no entry '{key}' that this run needs to load; it was saved from "
                f"another model or optimizer{config_diff}. Load a checkpoint of the same model, or load only "
                "the model (leave 'optim' out of the state) when the optimizer changed")
        shape = list(saved[key]["shape"])
        if shape != list(tensor.shape):
            raise CheckpointError(
                f"checkpoint {checkpoint} does not fit this model: '{key}' has shape {shape} in the checkpoint "
                f"and {list(tensor.shape)} here{config_diff}. Use a checkpoint of the same model config")


def describe_config_diff(saved: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> str:
    """'; model config differs: d_model 64 (checkpoint) vs 128 (here)', or '' when unknown or equal."""
    if not saved or not current:
        return ""
    diffs = [f"{k} {saved.get(k)!r} (checkpoint) vs {current.get(k)!r} (here)"
             for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    return f"; model config differs: {', '.join(diffs)}" if diffs else ""
