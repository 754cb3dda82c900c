"""Data mixes: sources with weights or token budgets, and how many instances each contributes to one pass.

Mix file (yaml; paths relative to the mix file):

    total_tokens: 2_000_000_000        # optional: tokens in one pass over the mix
    sources:
      - name: code
        paths: [code/]                 # olmo-tokenize dirs, token files or globs
        weight: 0.7                    # share of what the budgets leave
        max_repetition: 2.0            # optional (default 1.0): at most this many passes over the source
      - name: math
        paths: [math/part-*.npy]
        tokens: 500_000_000            # a fixed token budget instead of a weight

Each source has exactly one of `weight` and `tokens`. Without `total_tokens`, one pass is the largest that takes
no weighted source beyond `max_repetition` passes. A plain `DataConfig.sources` list is a mix where every source
contributes all of its instances once.

Over one pass the shares are exact up to rounding (one instance per source); a window of n samples inside a pass
is a random draw without replacement, so a share deviates from its weight w by about sqrt(w (1 - w) / n)
(tests/data/test_mix.py holds 640 samples to 0.05).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import yaml

from olmo_train.errors import DataError


@dataclass(frozen=True, slots=True)
class MixSource:
    name: str
    paths: tuple[str, ...]
    weight: float | None = None
    tokens: int | None = None
    max_repetition: float = 1.0


@dataclass(frozen=True, slots=True)
class Mix:
    sources: tuple[MixSource, ...]
    total_tokens: int | None = None
    base_dir: str | None = None
    """Directory that relative paths are resolved against (the mix file's)."""

    @property
    def weighted(self) -> bool:
        return any(s.weight is not None or s.tokens is not None for s in self.sources)


def mix_from_paths(paths: list[str]) -> Mix:
    """Every path one source, each taken whole, once (no weights)."""
    return Mix(sources=tuple(MixSource(name=p, paths=(p,)) for p in paths))


def _parse_source(entry: object, where: str) -> MixSource:
    if not isinstance(entry, dict) or "paths" not in entry or "name" not in entry:
        raise DataError(f"{where}: each source needs `name` and `paths`, got {entry!r}.")
    unknown = set(entry) - {"name", "paths", "weight", "tokens", "max_repetition"}
    if unknown:
        raise DataError(f"{where}: source {entry['name']!r} has unknown keys {sorted(unknown)}; valid: name, "
                        f"paths, weight, tokens, max_repetition.")
    paths = entry["paths"]
    paths = (paths,) if isinstance(paths, str) else tuple(paths)
    src = MixSource(name=str(entry["name"]), paths=paths, weight=entry.get("weight"), tokens=entry.get("tokens"),
                    max_repetition=float(entry.get("max_repetition", 1.0)))
    if (src.weight is None) == (src.tokens is None):
        raise DataError(f"{where}: source {src.name!r} needs exactly one of `weight` and `tokens`.")
    if (src.weight is not None and src.weight <= 0) or (src.tokens is not None and src.tokens <= 0):
        raise DataError(f"{where}: source {src.name!r} has a non-positive weight or token budget.")
    if src.max_repetition <= 0:
        raise DataError(f"{where}: source {src.name!r} has max_repetition {src.max_repetition}; must be > 0.")
    return src


def load_mix(path: str) -> Mix:
    if not os.path.isfile(path):
        raise DataError(f"mix file {path} does not exist. Fix: check DataConfig.mix.")
    with open(path) as fh:
        try:
            raw = yaml.safe_load(fh)
        except yaml.YAMLError as e:
            raise DataError(f"mix file {path} is not valid yaml: {e}") from e
    if not isinstance(raw, dict) or not raw.get("sources"):
        raise DataError(f"mix file {path} needs a non-empty `sources:` list (see olmo_train/data/mix.py).")
    sources = tuple(_parse_source(e, path) for e in raw["sources"])
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise DataError(f"mix file {path} repeats source names: {names}.")
    total = raw.get("total_tokens")
    if total is not None and int(total) <= 0:
        raise DataError(f"mix file {path}: total_tokens must be > 0, got {total}.")
    return Mix(sources=sources, total_tokens=None if total is None else int(total),
               base_dir=os.path.dirname(os.path.abspath(path)))


def instance_counts(mix: Mix, sizes: list[int], seq_len: int) -> list[int]:
    """Instances each source contributes to one pass, given each source's training instances `sizes`."""
    if not mix.weighted:
        return list(sizes)
    counts = [0 if s.tokens is None else max(1, round(s.tokens / seq_len)) for s in mix.sources]
    weighted = [i for i, s in enumerate(mix.sources) if s.weight is not None]
    if weighted:
        total_w = sum(mix.sources[i].weight for i in weighted)
        if mix.total_tokens is not None:
            rest = mix.total_tokens / seq_len - sum(counts)
            if rest < len(weighted):
                raise DataError(f"mix total_tokens {mix.total_tokens} leaves nothing for the weighted sources "
                                f"after the token budgets. Fix: raise total_tokens or lower the budgets.")
        else:
            rest = min(mix.sources[i].max_repetition * sizes[i] * total_w / mix.sources[i].weight for i in weighted)
        for i in weighted:
            counts[i] = max(1, math.floor(mix.sources[i].weight / total_w * rest))
    for src, count, size in zip(mix.sources, counts, sizes):
        if count > src.max_repetition * size + 1e-9:
            raise DataError(
                f"mix source {src.name!r} would be repeated {count / size:.2f} times ({count} instances of "
                f"{seq_len} tokens from {size}), above its max_repetition {src.max_repetition}. Fix: raise its "
                f"max_repetition, or lower its weight / tokens / the mix's total_tokens.")
    return counts
