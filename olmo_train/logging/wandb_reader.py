"""Reads W&B's offline `.wandb` files back (W&B ships no public reader for them).

Layout (W&B 0.31, measured): a 7-byte header (b":W&B", magic 0xBEE1 little-endian, version 0), then a LevelDB
log: 32 KiB blocks (counted from the start of the file), each holding chunks of
`crc32 (4, LE) | length (2, LE) | type (1: full, 2: first, 3: middle, 4: last) | payload`; a block's tail
shorter than a chunk header is zero padding. A record's payload is a serialised
`wandb.proto.wandb_internal_pb2.Record`.
"""

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

from olmo_train.errors import OlmoTrainError

HEADER = b":W&B" + struct.pack("<H", 0xBEE1) + b"\x00"
BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(OlmoTrainError):
    """A `.wandb` file that is not W&B's format or is corrupt before its end."""


def _payloads(data: bytes, path: Path) -> Iterator[bytes]:
    if not data.startswith(HEADER):
        raise WandbFileError(f"{path}: no W&B header (starts with {data[:7]!r})")
    pos, parts = len(HEADER), []
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:
            pos += left_in_block
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        start = pos + CHUNK_HEADER
        payload = data[start:start + length]
        if kind == 0 and length == 0:  # preallocated zeros: the writer stopped here
            return
        if len(payload) < length:  # torn tail of a killed writer
            return
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise WandbFileError(f"{path}: checksum mismatch in the chunk at byte {pos}")
        pos = start + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            parts = [payload]
        elif kind == MIDDLE:
            parts.append(payload)
        elif kind == LAST:
            yield b"".join(parts + [payload])
            parts = []
        else:
            raise WandbFileError(f"{path}: unknown chunk type {kind} at byte {pos}")


def read_records(path: str | Path) -> Iterator[pb.Record]:
    """Every `Record` in one `.wandb` file, in order."""
    path = Path(path)
    for payload in _payloads(path.read_bytes(), path):
        record = pb.Record()
        record.ParseFromString(payload)
        yield record


def read_history(path: str | Path) -> list[dict]:
    """The `history` rows of one `.wandb` file: dicts of key -> JSON-decoded value (with `_step`)."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        if record.history.HasField("step") and "_step" not in row:
            row["_step"] = record.history.step.num
        rows.append(row)
    return rows


def run_files(wandb_dir: str | Path, run_id: str) -> list[Path]:
    """The `.wandb` files of run `run_id` under a `wandb/` directory, one per attempt, oldest first."""
    return sorted(Path(wandb_dir).glob(f"*-{run_id}/run-{run_id}.wandb"))


def read_run_history(wandb_dir: str | Path, run_id: str) -> list[dict]:
    """History rows of every attempt of run `run_id`, attempts in order."""
    return [row for path in run_files(wandb_dir, run_id) for row in read_history(path)]


def wait_until_finished(path: str | Path, timeout_s: float = 60.0) -> bool:
    """Waits until a `.wandb` file holds its `exit` record. W&B's `finish()` returns before its service process
    has written the file out (measured: a 100 kB record still missing right after it); True once complete."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if any(r.WhichOneof("record_type") == "exit" for r in read_records(path)):
                return True
        except (OSError, WandbFileError):
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
