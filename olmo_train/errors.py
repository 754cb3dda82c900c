"""One exception hierarchy for the whole framework.

Messages name the offending field, file or variable, show the value, and say the fix or the valid options.
`assert` stays reserved for internal invariants.
"""


class OlmoTrainError(Exception):
    """Base class of every error olmo-train raises on purpose."""


class ConfigError(OlmoTrainError, ValueError):
    """An invalid or impossible configuration (unknown key, wrong value, shapes that do not fit)."""


class DataError(OlmoTrainError, ValueError):
    """Missing, empty, malformed or incompatible data (token files, mixes, tokenizers)."""


class CheckpointError(OlmoTrainError, RuntimeError):
    """A checkpoint that is missing, truncated, corrupted or belongs to another model or run."""


class EnvironmentSetupError(OlmoTrainError, RuntimeError):
    """The machine or launcher environment is unusable (missing package, device, variable, disk space)."""
