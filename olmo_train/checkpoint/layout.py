"""Where checkpoints live in a run directory, which of them are good, and which retention removes.

RUN/checkpoints/step<N>/      committed (renamed from .tmp-step<N>/ after its manifest was written)
RUN/checkpoints/.tmp-step<N>/ being written, or left over by a crash (removed by the next manager)
RUN/checkpoints/.del-step<N>/ being deleted by retention (renamed first so it never looks committed)
RUN/checkpoints/latest        the step of the newest committed checkpoint (written via temp + rename)
"""

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from olmo_train.checkpoint.manifest import MANIFEST, find_problem, read_manifest, write_bytes_durably
from olmo_train.checkpoint.safe_reader import METADATA_FILE
from olmo_train.errors import CheckpointError

log = logging.getLogger(__name__)

LATEST = "latest"
_STEP_DIR = re.compile(r"^step(\d+)$")
CheckpointKind = Literal["dcp", "custom", "hf"]


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step{step}"


def tmp_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f".tmp-step{step}"


def committed_steps(checkpoints: Path) -> list[int]:
    """Steps of the `step<N>/` directories holding a manifest, oldest first (not yet verified)."""
    if not checkpoints.is_dir():
        return []
    steps = [int(m.group(1)) for p in checkpoints.iterdir() if (m := _STEP_DIR.match(p.name))]
    return sorted(s for s in steps if (step_dir(checkpoints, s) / MANIFEST).is_file())


def read_latest(checkpoints: Path) -> int | None:
    try:
        return int((checkpoints / LATEST).read_text().strip())
    except (OSError, ValueError):
        return None


def write_latest(checkpoints: Path, step: int) -> None:
    write_bytes_durably(checkpoints / LATEST, f"{step}\n".encode())


def newest_good(checkpoints: Path) -> Path | None:
    """The newest committed checkpoint under `checkpoints` that verifies; each newer corrupt one is skipped with
    a warning naming it and the one used instead. Corrupt ones are left in place for inspection."""
    skipped: list[str] = []
    for step in reversed(committed_steps(checkpoints)):
        path = step_dir(checkpoints, step)
        problem = find_problem(path)
        if problem is None:
            if skipped:
                log.warning("using checkpoint %s instead of the newer corrupt %s (left in place, not deleted)",
                            path, ", ".join(skipped))
            return path
        skipped.append(str(path))
        log.warning("skipping corrupt checkpoint %s: %s", path, problem)
    if skipped:
        log.warning("no good checkpoint in %s: every committed one is corrupt (%s)", checkpoints, ", ".join(skipped))
    return None


def clean_leftovers(checkpoints: Path) -> None:
    """Removes `.tmp-*` (interrupted saves) and `.del-*` (interrupted deletions) left by a crashed attempt."""
    if not checkpoints.is_dir():
        return
    for path in checkpoints.iterdir():
        if path.is_dir() and (path.name.startswith(".tmp-step") or path.name.startswith(".del-step")):
            log.info("removing %s left over by an interrupted attempt", path)
            shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class Entry:
    step: int
    ephemeral: bool


def steps_to_delete(entries: list[Entry], *, keep: int, keep_every: int) -> list[int]:
    """Retention over good checkpoints: the newest always stays; older ephemeral ones go; of the regular ones the
    newest `keep` stay, and those at multiples of `keep_every` stay forever."""
    if not entries:
        return []
    entries = sorted(entries, key=lambda e: e.step)
    newest = entries[-1].step
    recent = {e.step for e in [e for e in entries if not e.ephemeral][-keep:]}
    doomed = []
    for e in entries[:-1]:
        forever = not e.ephemeral and keep_every > 0 and e.step % keep_every == 0
        if e.step != newest and (e.ephemeral or (e.step not in recent and not forever)):
            doomed.append(e.step)
    return doomed


def apply_retention(checkpoints: Path, *, keep: int, keep_every: int) -> list[int]:
    """Deletes what `steps_to_delete` names among the checkpoints that verify (corrupt ones are never counted
    nor deleted); returns the deleted steps."""
    entries = []
    for step in committed_steps(checkpoints):
        path = step_dir(checkpoints, step)
        if find_problem(path) is None:
            entries.append(Entry(step, bool(read_manifest(path).get("ephemeral"))))
    doomed = steps_to_delete(entries, keep=keep, keep_every=keep_every)
    for step in doomed:
        trash = checkpoints / f".del-step{step}"
        step_dir(checkpoints, step).rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("retention: deleted checkpoint step%s", step)
    return doomed


def checkpoint_kind(path: Path) -> CheckpointKind:
    """"dcp" (a DCP checkpoint: ours or any dir with .metadata), "custom" (ours, written by `save_with`, e.g.
    DeepSpeed) or "hf" (a transformers olmo_hybrid dir); CheckpointError for anything else."""
    if (path / MANIFEST).is_file():
        return read_manifest(path)["kind"]
    if (path / METADATA_FILE).is_file():
        return "dcp"
    config = path / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{config} is not readable JSON ({e})") from e
        if model_type == "olmo_hybrid":
            return "hf"
        raise CheckpointError(f"{path} is a transformers '{model_type}' model; only 'olmo_hybrid' can be loaded")
    raise CheckpointError(f"{path} is neither a checkpoint (no {MANIFEST} or {METADATA_FILE}) nor a transformers "
                          "olmo_hybrid directory (no config.json)")


def resolve_load_path(load_path: Path) -> Path:
    """The checkpoint that `checkpoint.load_path` means: the dir itself (a checkpoint or HF dir), or the newest
    good checkpoint of a `checkpoints/` dir or of a run dir. CheckpointError when there is none."""
    if not load_path.exists():
        raise CheckpointError(f"checkpoint.load_path={str(load_path)!r} does not exist; fix the path or set it to "
                              "null to start from scratch")
    for candidate in (load_path, load_path / "checkpoints"):
        if committed_steps(candidate):
            found = newest_good(candidate)
            if found is None:
                raise CheckpointError(f"checkpoint.load_path={str(load_path)!r}: every checkpoint in {candidate} "
                                      "is corrupt; point it at a good one")
            return found
    if (load_path / MANIFEST).is_file():
        problem = find_problem(load_path)
        if problem is not None:
            raise CheckpointError(f"checkpoint.load_path={str(load_path)!r} is corrupt: {problem}")
    checkpoint_kind(load_path)  # raises when it is not something we can load
    return load_path
