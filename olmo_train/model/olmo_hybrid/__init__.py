"""The OLMo Hybrid family: config, model, presets and the transformers (HF) adapter."""

from olmo_train.model.olmo_hybrid.config import BLOCK_KINDS, OlmoHybridConfig
from olmo_train.model.olmo_hybrid.model import BLOCK_TYPES, OlmoHybrid

__all__ = ["BLOCK_KINDS", "BLOCK_TYPES", "OlmoHybrid", "OlmoHybridConfig"]
