"""Sharded asynchronous checkpoints (DCP): atomic commit, retention, verified resume, resharding, HF export."""

from olmo_train.checkpoint.config import CheckpointConfig
from olmo_train.checkpoint.layout import CheckpointKind, checkpoint_kind
from olmo_train.checkpoint.manager import CheckpointManager
from olmo_train.checkpoint.manifest import verify
from olmo_train.checkpoint.state import ModelState, OptimizerState, training_state

__all__ = ["CheckpointConfig", "CheckpointKind", "CheckpointManager", "ModelState", "OptimizerState",
           "checkpoint_kind", "training_state", "verify"]
