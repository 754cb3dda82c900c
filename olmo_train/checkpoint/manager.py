"""CheckpointManager: asynchronous, atomic, verified DCP checkpoints of one run, with retention and resume.

Every public method is collective: all ranks call it. Saving goes: `.tmp-step<N>/` prepared by rank 0 -> train
state (rank 0) and per-rank RNG states written -> state staged to CPU memory (pinned on GPU) -> `save` returns
(async) -> a background thread writes the shards with DCP over a dedicated gloo group, so it never interleaves
with training collectives -> rank 0 fsyncs, writes `manifest.json`, renames to `step<N>/`, rewrites `latest`,
applies retention. Any failure on any rank removes the temp dir, leaves `latest` and older checkpoints untouched
and is raised (as CheckpointError) by `wait()`, which the next `save` and `close` call.
"""

import dataclasses
import errno
import json
import logging
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.stateful import Stateful

from olmo_train.checkpoint import layout
from olmo_train.checkpoint.config import CheckpointConfig
from olmo_train.checkpoint.manifest import (MANIFEST, TRAIN_FILE, build_manifest, find_problem, fsync_path,
                                            fsync_tree, read_manifest, redact_secrets, write_json_durably)
from olmo_train.checkpoint.rng import load_rng, rng_file, save_rng
from olmo_train.checkpoint.safe_reader import SafeFileSystemReader, SafeLoadPlanner, read_dcp_metadata, tensor_shapes
from olmo_train.checkpoint.staging import CpuStager
from olmo_train.checkpoint.state import TRAIN_KEY, check_fits, describe_config_diff, flatten_tensors, resolve
from olmo_train.errors import CheckpointError

log = logging.getLogger(__name__)
# DCP warns on every single-process save/load; running without a process group is deliberate here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized",
                        category=UserWarning)


class CheckpointManager:
    """Saves, commits, prunes and finds the checkpoints of the run in `run_dir` (see the module docstring).

    `model_config` (a dataclass such as OlmoHybridConfig, or a dict) goes into every manifest: the export
    command rebuilds the model from it and a load into a model of another shape names the differing fields.
    """

    def __init__(self, cfg: CheckpointConfig, run_dir: str | Path, *,
                 model_config: Any | None = None) -> None:
        self.cfg = cfg
        self.dir = Path(run_dir) / "checkpoints"
        self.model_config = _config_dict(model_config)
        self._dist = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self._dist else 0
        self.world_size = dist.get_world_size() if self._dist else 1
        # A group of our own: the background writer's collectives never interleave with the trainer's.
        self._pg = dist.new_group(backend="gloo", timeout=timedelta(seconds=cfg.collective_timeout_s)) \
            if self._dist else None
        self._stager: CpuStager | None = None
        self._thread: threading.Thread | None = None
        self._error: CheckpointError | None = None
        self.last_timings: dict[str, float] = {}
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            layout.clean_leftovers(self.dir)
        self._barrier()

    # ----------------------------------------------------------------------------------------------- saving
    def save(self, step: int, state: Mapping[str, Any], *, ephemeral: bool = False) -> None:
        """Checkpoints `state` (see olmo_train.checkpoint.state) as step `step`. With `cfg.async_save` it returns
        once the state is staged in CPU memory; the write and commit finish in the background."""
        self.wait()
        t0 = time.perf_counter()
        train = _train_json(state.get(TRAIN_KEY, {}), step)
        tmp = self._begin(step)
        if tmp is None:
            self.last_timings = {"blocking_s": time.perf_counter() - t0, "total_s": time.perf_counter() - t0}
            return
        box: dict[str, Any] = {}

        def prepare() -> None:
            self._write_small(tmp, train)
            box["state"] = self._stage(resolve(state)) if self.cfg.async_save else resolve(state)

        self._agree(_attempt(prepare), step, tmp)  # a failure on one rank (e.g. out of memory) stops all
        dcp_state = box["state"]
        self.last_timings = {"blocking_s": time.perf_counter() - t0}
        if not self.cfg.async_save:
            self._write_and_commit(step, tmp, dcp_state, ephemeral, t0)
            self.last_timings["blocking_s"] = self.last_timings["total_s"]  # training waited for all of it
            self._raise_pending()
            return
        self._thread = threading.Thread(target=self._write_and_commit, args=(step, tmp, dcp_state, ephemeral, t0),
                                        name=f"checkpoint-step{step}", daemon=False)
        self._thread.start()

    def save_with(self, step: int, write_fn: Callable[[Path], None], *, train: dict[str, Any] | None = None,
                  ephemeral: bool = False) -> None:
        """The same commit protocol around any writer: every rank calls `write_fn(tmp_dir)` (e.g. DeepSpeed's
        `engine.save_checkpoint(str(tmp_dir))`), then rank 0 commits. Blocking. `train` is saved as train.json."""
        self.wait()
        train_json = _train_json(train or {}, step)
        tmp = self._begin(step)
        if tmp is None:
            return
        self._agree(_attempt(lambda: (self._write_small(tmp, train_json), self._sync_small(tmp), write_fn(tmp))),
                    step, tmp)
        self._finish(step, tmp, ephemeral, kind="custom")
        self._raise_pending()

    def wait(self) -> None:
        """Blocks until the pending background save is committed; raises its CheckpointError if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._raise_pending()

    def close(self) -> None:
        """wait(), then frees the staging buffers. Call before the process exits."""
        try:
            self.wait()
        finally:
            if self._stager is not None:
                self._stager.close()
                self._stager = None

    # ---------------------------------------------------------------------------------------------- loading
    def resume_path(self) -> Path | None:
        """The newest committed checkpoint of this run that verifies (newer corrupt ones are skipped with a
        warning and kept on disk), else the checkpoint `cfg.load_path` names (see `checkpoint_kind` for what it
        is), else None."""
        self.wait()  # one thread at a time on the checkpoint group
        return self._from_rank0(self._find_resume_path)

    def load(self, path: str | Path, state: Mapping[str, Any], *, restore_rng: bool = True) -> dict[str, Any]:
        """Loads a DCP checkpoint into `state` in place (any world size: DCP reshards) and returns its train
        state. Only the entries present in `state` are read (pass just {"model": ...} for weights only). RNG
        states are restored when the world size matches the one that saved."""
        self.wait()
        path = Path(path)
        manifest = self._from_rank0(lambda: _checked_manifest(path))
        kind = manifest["kind"] if manifest else "dcp"
        if kind != "dcp":
            raise CheckpointError(f"{path} is a '{kind}' checkpoint, not a DCP one: "
                                  + ("load it with olmo_train.model.hf.load_hf(path)" if kind == "hf" else
                                     "load it with CheckpointManager.load_with(path, read_fn)"))
        dcp_state = resolve(state)
        saved = manifest.get("tensors") if manifest else None
        saved = saved if saved is not None else tensor_shapes(read_dcp_metadata(path))
        config_diff = describe_config_diff((manifest or {}).get("model_config"), self.model_config)
        check_fits(str(path), saved, flatten_tensors(dcp_state), config_diff)
        try:
            dcp.load(dcp_state, storage_reader=SafeFileSystemReader(str(path)), planner=SafeLoadPlanner(),
                     process_group=self._pg,
                     no_dist=not self._dist)
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP raises a BaseException subclass
            raise CheckpointError(f"loading checkpoint {path} failed: {_describe(e)}") from e
        for key, value in state.items():
            if isinstance(value, Stateful) and key != TRAIN_KEY:
                value.load_state_dict(dcp_state[key])
        return self._finish_load(path, manifest, restore_rng)

    def load_with(self, path: str | Path, read_fn: Callable[[Path], None], *,
                  restore_rng: bool = True) -> dict[str, Any]:
        """Verifies a checkpoint written by `save_with`, calls `read_fn(path)` on every rank (e.g. DeepSpeed's
        `engine.load_checkpoint(str(path))`), restores RNG states and returns the train state."""
        self.wait()
        path = Path(path)
        manifest = self._from_rank0(lambda: _checked_manifest(path))
        read_fn(path)
        return self._finish_load(path, manifest, restore_rng)

    # ------------------------------------------------------------------------------------------- internals
    def _begin(self, step: int) -> Path | None:
        """Rank 0 prepares `.tmp-step<N>/`; None (on every rank) when step<N> is already committed and good."""
        def prepare() -> Path | None:
            final, tmp = layout.step_dir(self.dir, step), layout.tmp_dir(self.dir, step)
            if (final / MANIFEST).is_file() and find_problem(final) is None:
                log.info("checkpoint %s is already committed; not saving step %s again", final, step)
                return None
            if final.exists():
                aside = final.with_name(f"{final.name}.corrupt-{int(time.time())}")
                log.warning("moving the uncommitted or corrupt %s aside to %s before saving again", final, aside)
                final.rename(aside)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            return tmp
        return self._from_rank0(prepare)

    def _write_small(self, tmp: Path, train: dict[str, Any]) -> None:
        """RNG state (every rank) and train.json (rank 0), unsynced: `_sync_small` makes them durable later."""
        save_rng(tmp, self.rank)
        if self.rank == 0:
            (tmp / TRAIN_FILE).write_text(json.dumps(train, indent=1, sort_keys=True) + "\n")

    def _sync_small(self, tmp: Path) -> None:
        fsync_path(rng_file(tmp, self.rank))
        if self.rank == 0:
            fsync_path(tmp / TRAIN_FILE)

    def _stage(self, dcp_state: dict[str, Any]) -> dict[str, Any]:
        if self._stager is None:
            on_gpu = torch.cuda.is_available() and any(t.is_cuda for t in flatten_tensors(dcp_state).values())
            self._stager = CpuStager(pin_memory=on_gpu)
        return self._stager.stage(dcp_state)

    def _write_and_commit(self, step: int, tmp: Path, dcp_state: dict[str, Any], ephemeral: bool,
                          t0: float) -> None:
        try:
            writer = FileSystemWriter(str(tmp), sync_files=True, thread_count=self.cfg.write_threads)
            t_write = time.perf_counter()
            err = _attempt(lambda: (self._sync_small(tmp), dcp.save(dcp_state, storage_writer=writer,
                                    process_group=self._pg, no_dist=not self._dist)))
            self.last_timings["write_s"] = time.perf_counter() - t_write
            if err is None:
                self._finish(step, tmp, ephemeral, kind="dcp")
            else:
                self._fail(step, tmp, self._gather_error(err))
        except BaseException as e:  # noqa: BLE001 - reported by wait() on the main thread
            self._error = e if isinstance(e, CheckpointError) else CheckpointError(
                f"saving checkpoint step{step} failed: {_describe(e)}")
        self.last_timings["total_s"] = time.perf_counter() - t0

    def _finish(self, step: int, tmp: Path, ephemeral: bool, kind: str) -> None:
        """All ranks: agree that every rank wrote its part, rank 0 commits, all learn the outcome."""
        err = self._gather_error(None)
        if err is None:
            err = self._from_rank0(lambda: _attempt(lambda: self._commit(step, tmp, ephemeral, kind)))
        if err is not None:
            self._fail(step, tmp, err)

    def _commit(self, step: int, tmp: Path, ephemeral: bool, kind: str) -> None:
        t_commit = time.perf_counter()
        tensors = tensor_shapes(read_dcp_metadata(tmp)) if kind == "dcp" else None
        fsync_tree(tmp)
        manifest = build_manifest(tmp, step=step, kind=kind, ephemeral=ephemeral, world_size=self.world_size,
                                  model_config=self.model_config, tensors=tensors)
        write_json_durably(tmp / MANIFEST, manifest)
        final = layout.step_dir(self.dir, step)
        tmp.rename(final)
        fsync_path(self.dir)
        log.info("committed checkpoint %s", final)
        self.last_timings["commit_s"] = time.perf_counter() - t_commit
        try:
            layout.write_latest(self.dir, step)
        except OSError as e:
            log.warning("could not update %s (%s); resume still finds %s by scanning", self.dir / "latest", e, final)
        t_retention = time.perf_counter()
        try:
            layout.apply_retention(self.dir, keep=self.cfg.keep, keep_every=self.cfg.keep_every)
        except OSError as e:
            log.warning("retention in %s failed (%s); older checkpoints stay until the next save", self.dir, e)
        self.last_timings["retention_s"] = time.perf_counter() - t_retention

    def _fail(self, step: int, tmp: Path, err: str) -> None:
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        latest = layout.read_latest(self.dir)
        previous = f"step{latest}" if latest is not None else "none yet"
        raise CheckpointError(f"saving checkpoint step{step} in {self.dir} failed: {err}. The temporary "
                              f"directory was removed; the previous checkpoint ({previous}) and 'latest' are "
                              f"unchanged.{_fix_hint(err)}")

    def _agree(self, err: str | None, step: int, tmp: Path) -> None:
        err = self._gather_error(err)
        if err is not None:
            self._fail(step, tmp, err)

    def _gather_error(self, err: str | None) -> str | None:
        """The first rank's error, on every rank (one all-gather over the checkpoint group)."""
        if not self._dist:
            return err
        errors: list[str | None] = [None] * self.world_size
        dist.all_gather_object(errors, err, group=self._pg)
        first = next(((r, e) for r, e in enumerate(errors) if e is not None), None)
        if first is None:
            return None
        rank, error = first
        return error if error.startswith("rank ") else f"rank {rank}: {error}"  # DCP already names the rank

    def _from_rank0(self, fn: Callable[[], Any]) -> Any:
        """fn() run on rank 0, its result (or its CheckpointError) on every rank."""
        result: Any = None
        if self.rank == 0:
            try:
                result = ("ok", fn())
            except CheckpointError as e:
                result = ("error", str(e))
        if self._dist:
            box = [result]
            dist.broadcast_object_list(box, src=0, group=self._pg)
            result = box[0]
        if result[0] == "error":
            raise CheckpointError(result[1])
        return result[1]

    def _barrier(self) -> None:
        if self._dist:
            dist.barrier(group=self._pg)

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _find_resume_path(self) -> Path | None:
        found = layout.newest_good(self.dir)
        if found is not None or self.cfg.load_path is None:
            return found
        found = layout.resolve_load_path(Path(self.cfg.load_path))
        log.info("no committed checkpoint in %s; starting from checkpoint.load_path: %s (%s)", self.dir, found,
                 layout.checkpoint_kind(found))
        return found

    def _finish_load(self, path: Path, manifest: dict[str, Any] | None, restore_rng: bool) -> dict[str, Any]:
        train_file = path / TRAIN_FILE
        train = _read_train(train_file) if train_file.is_file() else {}
        saved_ws = (manifest or {}).get("world_size")
        if restore_rng and saved_ws == self.world_size and rng_file(path, self.rank).is_file():
            load_rng(path, self.rank)
        elif restore_rng and self.rank == 0:
            log.warning("RNG states of %s not restored: saved at world size %s, running at %s", path, saved_ws,
                        self.world_size)
        if self.rank == 0:
            log.info("loaded checkpoint %s (step %s)", path, train.get("step", (manifest or {}).get("step")))
        return train


def _checked_manifest(path: Path) -> dict[str, Any] | None:
    """The verified manifest of `path`; None for a foreign DCP dir without one; CheckpointError if corrupt."""
    if not (path / MANIFEST).is_file():
        if layout.checkpoint_kind(path) == "hf":
            return {"kind": "hf"}
        return None
    problem = find_problem(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: {problem}; use resume_path() to pick a good one")
    return read_manifest(path)


def _train_json(train: Any, step: int) -> dict[str, Any]:
    if not isinstance(train, dict):
        raise CheckpointError(f"state['train'] is a {type(train).__name__}; it must be a JSON-able dict")
    try:
        json.dumps(train)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"state['train'] of step {step} is not JSON-able ({e}); keep tensors out of it "
                              "(convert with .item() / .tolist())") from e
    return redact_secrets({"step": step, **train})


def _read_train(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); the checkpoint is damaged") from e


def _config_dict(model_config: Any | None) -> dict[str, Any] | None:
    if model_config is None or isinstance(model_config, dict):
        return model_config
    if dataclasses.is_dataclass(model_config):
        return dataclasses.asdict(model_config)
    raise CheckpointError(f"model_config is a {type(model_config).__name__}; pass a dataclass or a dict")


def _attempt(fn: Callable[[], Any]) -> str | None:
    """None when fn() succeeds, else a description of what it raised (DCP raises BaseException subclasses)."""
    try:
        fn()
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - every rank must reach the next collective
        log.debug("checkpoint step failed", exc_info=True)
        return _describe(e)
    return None


def _describe(e: BaseException) -> str:
    """The root error of `e`, looking inside DCP's per-rank failures."""
    if isinstance(e, CheckpointException):
        inner = [f"rank {rank}: {_describe(exc)}" for rank, (exc, _) in e.failures.items()]
        return "; ".join(inner) or str(e)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"no space left on device ({e})"
    cause = e.__cause__ or e.__context__
    if cause is not None and isinstance(cause, OSError):
        return f"{type(e).__name__}: {e} (caused by {_describe(cause)})"
    return f"{type(e).__name__}: {e}"


def _fix_hint(err: str) -> str:
    if "no space left on device" in err:
        return (" Fix: free space on that file system, lower checkpoint.keep / keep_every, or point run.dir at a "
                "larger disk")
    return ""
