"""The manifest of a committed checkpoint, its verification, and durable (fsync'd, atomic) small-file writes.

A checkpoint directory `step<N>/` is committed when it holds `manifest.json`: the list of every other file with
its size (and a sha256 for small files), the format version, step, kind and model config. A directory whose files
disagree with its manifest is corrupt and is skipped on resume.
"""

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

from olmo_train.errors import CheckpointError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRAIN_FILE = "train.json"
RNG_DIR = "rng"
CHECKSUM_MAX_BYTES = 16 * 2**20
"""Files up to this size get a sha256 in the manifest (metadata, train state, RNG); larger ones a size only."""

_SECRET_KEY = re.compile(r"(api[_-]?key|secret|passw(or)?d|credential|(^|_)token$|(^|_)auth(_|$))", re.I)
_SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY")


def fsync_path(path: Path) -> None:
    """Flushes a file's (or a directory's entries') data to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_durably(path: Path, data: bytes) -> None:
    """Writes `path` via a temporary sibling, fsync and rename, so readers see the old or the new content."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def write_json_durably(path: Path, obj: Any) -> None:
    write_bytes_durably(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def redact_secrets(obj: Any) -> Any:
    """A copy of a JSON-able object with values under secret-looking keys (api_key, token, password, ...) and
    values equal to a secret environment variable replaced by "<redacted>"."""
    secrets = {os.environ[k] for k in _SECRET_ENV if os.environ.get(k)}
    if isinstance(obj, dict):
        return {k: "<redacted>" if isinstance(k, str) and _SECRET_KEY.search(k) and v is not None
                else redact_secrets(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_secrets(v) for v in obj]
    if isinstance(obj, str) and obj in secrets:
        return "<redacted>"
    return obj


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_files(root: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {"size": bytes, "sha256": hex (small files only)}} of every file under root but the
    manifest."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        size = path.stat().st_size
        files[rel] = {"size": size}
        if size <= CHECKSUM_MAX_BYTES:
            files[rel]["sha256"] = sha256_file(path)
    return files


def fsync_tree(root: Path) -> None:
    """fsyncs every file and directory under root (DCP fsyncs its own files; this covers the rest)."""
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        fsync_path(path)
    fsync_path(root)


def build_manifest(root: Path, *, step: int, kind: str, ephemeral: bool, world_size: int,
                   model_config: dict[str, Any] | None, tensors: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "step": step,
        "ephemeral": ephemeral,
        "created_unix_s": time.time(),
        "world_size": world_size,
        "torch_version": torch.__version__,
        "model_config": redact_secrets(model_config) if model_config is not None else None,
        "tensors": tensors,
        "files": describe_files(root),
    }


def read_manifest(path: Path) -> dict[str, Any]:
    """The parsed manifest of checkpoint directory `path`; CheckpointError if missing or malformed."""
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} has no {MANIFEST}: it was never committed (an interrupted save)") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{manifest_path} is unreadable or not JSON ({e})") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{manifest_path} is malformed: expected an object with a 'files' table")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{manifest_path} has format_version={version!r}; this olmo-train reads version "
                              f"{FORMAT_VERSION}: use the olmo-train version that wrote it")
    return manifest


def find_problem(path: Path) -> str | None:
    """Why checkpoint directory `path` cannot be trusted (missing / resized / altered file, bad manifest), or
    None when every file matches its manifest."""
    try:
        manifest = read_manifest(path)
    except CheckpointError as e:
        return str(e)
    for rel, info in manifest["files"].items():
        file = path / rel
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            return f"file {rel} is missing"
        if size != info.get("size"):
            return f"file {rel} has {size} bytes, the manifest says {info.get('size')}"
        if "sha256" in info and sha256_file(file) != info["sha256"]:
            return f"file {rel} does not match its sha256 checksum"
    return None


def verify(path: Path) -> dict[str, Any]:
    """The manifest of `path` after checking every file against it; CheckpointError naming the problem."""
    problem = find_problem(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: {problem}; use another checkpoint")
    return read_manifest(path)
