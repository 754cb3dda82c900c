"""The resumable training loader: a rank's micro-batches of any global step, computed directly.

Global step s covers global samples [start(s), start(s) + G) with start(s) = base_instance + (s - base_step) * G
(G = global_batch_size instances; base = (0, 0) unless a state dict was loaded). Rank r of W takes the
contiguous block [r * G / W, (r + 1) * G / W) of them and cuts it into micro-batches of mb rows. Which instance a
sample index names depends only on the seed (MixedDataset.locate), so every world size and micro-batch size
consumes the same samples per step, and a resume at step s needs no replay.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from olmo_train.data.batch import Batch, make_batch
from olmo_train.data.build import resolve_data
from olmo_train.data.config import DataConfig
from olmo_train.data.dataset import MixedDataset
from olmo_train.errors import ConfigError, DataError

STATE_VERSION = 1


class TrainLoader:
    def __init__(self, dataset: MixedDataset, *, global_batch_size: int, micro_batch_size: int, rank: int,
                 world_size: int, seed: int, device: torch.device | str = "cpu", prefetch: int = 2,
                 document_mask: bool = True, mask_document_ends: bool = True, allow_data_change: bool = False,
                 cache_dir: str | None = None) -> None:
        _check_batch_sizes(global_batch_size, micro_batch_size, rank, world_size)
        self.dataset = dataset
        self.seq_len = dataset.seq_len
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.device = torch.device(device)
        self.prefetch = prefetch
        self.document_mask, self.mask_document_ends = document_mask, mask_document_ends
        self.allow_data_change = allow_data_change
        self.cache_dir = cache_dir
        self.fingerprint = dataset.fingerprint()
        self.eos_token_id = dataset.eos_token_id
        self._base_step, self._base_instance = 0, 0
        self.next_step = 0
        self._vocab_needed: int | None = None
        self._vocab_limit: int | None = None  # set by check_vocab when raw files must be checked as read

    @property
    def vocab_size_needed(self) -> int:
        """Max token id + 1 over the data (from metadata; raw files are scanned once and the result cached)."""
        if self._vocab_needed is None:
            self._vocab_needed = self.dataset.max_token_id(self.cache_dir)[0] + 1
        return self._vocab_needed

    def check_vocab(self, vocab_size: int) -> None:
        """DataError if a token id (or the EOS id) is >= the model's vocab_size, naming the file. Files with
        metadata are checked now; raw files without it are checked batch by batch as they are read (a full scan
        of a large raw corpus at start-up would take hours; `vocab_size_needed` does scan)."""
        top, path = self.dataset.max_token_id(self.cache_dir, scan=False)
        if top >= vocab_size or self.eos_token_id >= vocab_size:
            bad = max(top, self.eos_token_id)
            raise DataError(f"token id {bad} (in {path or 'the EOS id'}) is >= the model's vocab_size {vocab_size}: "
                            f"data and model use different tokenizers. Fix: a model with vocab_size >= {bad + 1}, "
                            f"or data tokenized for this model.")
        self._vocab_limit = vocab_size if self.dataset.has_unscanned_files else None

    def _check_rows(self, tokens: np.ndarray, samples: np.ndarray) -> None:
        """tokens [n, T + 1]: DataError naming the file of the first row holding an id >= the vocab limit."""
        if self._vocab_limit is None or tokens.size == 0 or tokens.max() < self._vocab_limit:
            return
        row = int(np.flatnonzero((tokens >= self._vocab_limit).any(axis=1))[0])
        path = self.dataset.file_of(int(samples[row]), self.seed)
        raise DataError(f"token id {int(tokens[row].max())} in {path} is >= the model's vocab_size "
                        f"{self._vocab_limit}: data and model use different tokenizers. Fix: a model with a larger "
                        f"vocab_size, or data tokenized for this model.")

    @property
    def num_micro_batches(self) -> int:
        return self.global_batch_size // (self.world_size * self.micro_batch_size)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    def step_samples(self, step: int) -> np.ndarray:
        """Global sample indices of step `step` -> [G]."""
        start = self._base_instance + (step - self._base_step) * self.global_batch_size
        if start < 0:
            raise DataError(f"step {step} lies before the resumed step {self._base_step} of this loader.")
        return np.arange(start, start + self.global_batch_size, dtype=np.int64)

    def rank_samples(self, step: int) -> np.ndarray:
        """This rank's block of the step's samples -> [G / W]."""
        per_rank = self.global_batch_size // self.world_size
        return self.step_samples(step)[self.rank * per_rank:(self.rank + 1) * per_rank]

    def _build(self, step: int) -> list[Batch]:
        samples = self.rank_samples(step)
        tokens = self.dataset.read_train(samples, self.seed)  # [G / W, T + 1]
        self._check_rows(tokens, samples)
        mb = self.micro_batch_size
        return [make_batch(tokens[i:i + mb], samples[i:i + mb], self.eos_token_id,
                           document_mask=self.document_mask, mask_document_ends=self.mask_document_ends)
                for i in range(0, len(samples), mb)]

    def micro_batches(self, step: int) -> list[Batch]:
        """This rank's micro-batches of global step `step` (0-based), on the loader's device."""
        batches = [self._to_device(b) for b in self._build(step)]
        self.next_step = step + 1
        return batches

    def _to_device(self, batch: Batch) -> Batch:
        return batch if self.device.type == "cpu" else batch.to(self.device, non_blocking=True)

    def iter_from(self, step: int | None = None, num_steps: int | None = None) -> Iterator[tuple[int, list[Batch]]]:
        """(step, micro-batches) from `step` (None = the next unconsumed step) on, prepared by a background thread."""
        start = self.next_step if step is None else step
        stop = None if num_steps is None else start + num_steps
        source = self._prefetched(start, stop) if self.prefetch > 0 else _direct(self._build, start, stop)
        for s, batches in source:
            self.next_step = s + 1
            yield s, [self._to_device(b) for b in batches]

    def __iter__(self) -> Iterator[tuple[int, list[Batch]]]:
        return self.iter_from()

    def _prefetched(self, start: int, stop: int | None) -> Iterator[tuple[int, list[Batch]]]:
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stopping = threading.Event()
        pin = self.device.type == "cuda"
        worker = threading.Thread(target=_produce, args=(self._build, start, stop, pin, out, stopping),
                                  name="olmo-data-prefetch", daemon=True)
        worker.start()
        try:
            while True:
                item = out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stopping.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    out.get(timeout=0.05)
                except queue.Empty:
                    pass

    def state_dict(self) -> dict[str, Any]:
        """Tiny: the next step, the samples (and tokens) consumed before it, what identifies the data and order."""
        consumed = int(self.step_samples(self.next_step)[0])
        return {"version": STATE_VERSION, "step": self.next_step, "instances_consumed": consumed,
                "tokens_consumed": consumed * self.seq_len, "fingerprint": self.fingerprint, "seed": self.seed, "seq_len": self.seq_len,
                "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict[str, Any], allow_data_change: bool | None = None) -> None:
        """Resume after `state`; a changed fingerprint or seed is a DataError unless allow_data_change."""
        allow = self.allow_data_change if allow_data_change is None else allow_data_change
        if state.get("version") != STATE_VERSION:
            raise DataError(f"data loader state has version {state.get('version')}; this code reads "
                            f"{STATE_VERSION}.")
        changed = [f"{k}: checkpoint {state.get(k)!r}, now {getattr(self, k)!r}" for k in ("fingerprint", "seed")
                   if state.get(k) != getattr(self, k)]
        if changed and not allow:
            raise DataError("the data changed since the checkpoint was written (" + "; ".join(changed) + "): the "
                            "order would not continue. Fix: restore the data / seed, or resume anyway with "
                            "allow_data_change=True (data.allow_data_change=true in the trainer config).")
        self._base_step, self._base_instance = int(state["step"]), int(state["instances_consumed"])
        self.next_step = self._base_step


def _direct(build: Any, start: int, stop: int | None) -> Iterator[tuple[int, list[Batch]]]:
    step = start
    while stop is None or step < stop:
        yield step, build(step)
        step += 1


def _produce(build: Any, start: int, stop: int | None, pin: bool, out: queue.Queue,
             stopping: threading.Event) -> None:
    try:
        for step, batches in _direct(build, start, stop):
            if pin:
                batches = [b.pin_memory() for b in batches]
            while not stopping.is_set():
                try:
                    out.put((step, batches), timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stopping.is_set():
                return
        out.put(None)
    except BaseException as e:  # handed to the consumer, raised there
        out.put(e)


def _check_batch_sizes(global_batch_size: int, micro_batch_size: int, rank: int, world_size: int) -> None:
    if min(global_batch_size, micro_batch_size, world_size) < 1:
        raise ConfigError(f"global_batch_size ({global_batch_size}), micro_batch_size ({micro_batch_size}) and "
                          f"world_size ({world_size}) must all be >= 1.")
    if global_batch_size % (world_size * micro_batch_size):
        raise ConfigError(f"global_batch_size {global_batch_size} (instances) is not divisible by world_size "
                          f"{world_size} * micro_batch_size {micro_batch_size}. Fix: make global_batch_size a "
                          f"multiple of {world_size * micro_batch_size}.")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside [0, world_size={world_size}).")


def build_train_loader(cfg: DataConfig, *, seq_len: int, global_batch_size: int, micro_batch_size: int,
                       rank: int, world_size: int, seed: int, device: torch.device | str = "cpu",
                       vocab_size: int | None = None) -> TrainLoader:
    """The training loader of `cfg`; vocab_size (the model's), when given, is checked against the data."""
    _check_batch_sizes(global_batch_size, micro_batch_size, rank, world_size)
    data = resolve_data(cfg, seq_len=seq_len)
    loader = TrainLoader(data.train, global_batch_size=global_batch_size, micro_batch_size=micro_batch_size,
                         rank=rank, world_size=world_size, seed=seed + cfg.seed_offset, device=device,
                         prefetch=cfg.prefetch, document_mask=cfg.document_mask,
                         mask_document_ends=cfg.mask_document_ends, allow_data_change=cfg.allow_data_change,
                         cache_dir=cfg.resolved_cache_dir())
    if vocab_size is not None:
        loader.check_vocab(vocab_size)
    return loader
