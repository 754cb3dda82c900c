"""olmo-train: pretraining for hybrid Gated DeltaNet / attention language models (OLMo Hybrid)."""

__version__ = "0.1.0"
