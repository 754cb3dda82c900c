"""DataConfig -> the training mix and the validation instances (building the stdlib corpus on first use)."""

from __future__ import annotations

from dataclasses import dataclass

from olmo_train.data.config import DataConfig
from olmo_train.data.dataset import MixedDataset, SourceInstances, check_consistent, open_sources, resolve_eos
from olmo_train.data.memmap import open_token_files
from olmo_train.data.mix import Mix, load_mix, mix_from_paths
from olmo_train.errors import DataError


@dataclass(frozen=True, slots=True)
class ValidationPart:
    """Instances [start, start + count) of `source` are held out."""

    source: SourceInstances
    start: int
    count: int


@dataclass(frozen=True, slots=True)
class ResolvedData:
    train: MixedDataset
    validation: tuple[ValidationPart, ...]


def _mix_of(cfg: DataConfig) -> Mix:
    if cfg.mix:
        return load_mix(cfg.mix)
    if cfg.sources:
        return mix_from_paths(list(cfg.sources))
    from data_pipelines.stdlib_corpus import build_stdlib_corpus  # the pipeline imports this package too

    path = build_stdlib_corpus(cfg.resolved_cache_dir(), tokenizer=cfg.tokenizer, vocab_size=cfg.stdlib_vocab_size,
                               max_chars=cfg.stdlib_max_chars, num_workers=cfg.num_workers, progress=False)
    return mix_from_paths([path])


def _tokenizer_eos(cfg: DataConfig) -> int | None:
    if cfg.tokenizer is None:
        return None
    from data_pipelines.tokenizer import eos_token_id, load_tokenizer

    return eos_token_id(load_tokenizer(cfg.tokenizer))


def resolve_data(cfg: DataConfig, *, seq_len: int) -> ResolvedData:
    if seq_len < 2:
        raise DataError(f"seq_len must be >= 2, got {seq_len}.")
    mix = _mix_of(cfg)
    opened = open_sources(mix, dtype=cfg.dtype)
    val_files = open_token_files(list(cfg.validation_sources), dtype=cfg.dtype) if cfg.validation_sources else []
    every_file = [f for _, files in opened for f in files] + val_files
    check_consistent(every_file, f"data mix {cfg.mix}" if cfg.mix else "the data sources")
    needs_tokenizer = cfg.eos_token_id is None and any(f.eos_token_id is None for f in every_file)
    eos = resolve_eos(every_file, cfg.eos_token_id, _tokenizer_eos(cfg) if needs_tokenizer else None)
    fraction = 0.0 if cfg.validation_sources else cfg.validation_fraction
    sources = [SourceInstances.build(name, files, seq_len, fraction) for name, files in opened]
    train = MixedDataset(sources, mix if mix.weighted else None, seq_len, eos)
    if val_files:
        held = SourceInstances.build("validation", val_files, seq_len, 0.0)
        validation = (ValidationPart(held, 0, held.num_train),)
    else:
        validation = tuple(ValidationPart(s, s.num_train, s.num_val) for s in sources if s.num_val)
    return ResolvedData(train, validation)
