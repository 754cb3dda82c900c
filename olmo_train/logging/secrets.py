"""Keeps API keys and other secrets out of config dumps, logs and W&B.

Two nets: values of config keys that look secret are replaced, and the values of secret-looking environment
variables (WANDB_API_KEY, HF_TOKEN, ...) are replaced wherever they appear in a string.
"""

import os
import re
from typing import Any

MASK = "***"
_SECRET_NAME = re.compile(r"(api[_-]?key|secret|passw(or)?d|credential|(^|_)token$|(^|_)auth)", re.IGNORECASE)
_MIN_SECRET_LEN = 6  # shorter values ("1", "true") would mask innocent text


def is_secret_name(name: str) -> bool:
    """'WANDB_API_KEY', 'hf_token', 'password' yes; 'eos_token_id', 'global_batch_tokens' no."""
    return bool(_SECRET_NAME.search(name))


def secret_values(env: dict[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    values = {v for k, v in env.items() if is_secret_name(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, env: dict[str, str] | None = None) -> str:
    for value in secret_values(env):
        text = text.replace(value, MASK)
    return text


def redact(obj: Any, env: dict[str, str] | None = None) -> Any:
    """A copy of a JSON-like tree with secret-named keys masked and secret values removed from strings."""
    if isinstance(obj, dict):
        return {k: (MASK if is_secret_name(str(k)) and obj[k] not in (None, "") else redact(v, env))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, env) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, env)
    return obj
