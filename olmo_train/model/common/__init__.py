"""Building blocks shared by model families: norms, SwiGLU, attention, the Gated DeltaNet mixer, init."""

from olmo_train.model.common.attention import Attention
from olmo_train.model.common.gdn import GatedDeltaNet
from olmo_train.model.common.init import InitSpec, init_module
from olmo_train.model.common.mlp import SwiGLU
from olmo_train.model.common.norm import GatedRMSNorm, RMSNorm

__all__ = ["Attention", "GatedDeltaNet", "GatedRMSNorm", "InitSpec", "RMSNorm", "SwiGLU", "init_module"]
