"""The model package: `OlmoHybrid`, its config, presets, the HF adapter and the kernels (`ops`).

`olmo_train.model.presets` and `olmo_train.model.hf` are the family's modules (in `olmo_hybrid/`), also
importable under these short names.
"""

import sys

from olmo_train.model.olmo_hybrid import hf, presets
from olmo_train.model.olmo_hybrid.config import OlmoHybridConfig
from olmo_train.model.olmo_hybrid.model import OlmoHybrid

sys.modules[f"{__name__}.presets"] = presets
sys.modules[f"{__name__}.hf"] = hf

__all__ = ["OlmoHybrid", "OlmoHybridConfig", "hf", "presets"]
