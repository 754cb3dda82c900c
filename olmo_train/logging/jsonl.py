"""RUN/metrics.jsonl: one JSON object per logged step, appended and flushed by rank 0."""

import json
import math
import os
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    """Every record of a metrics file (a torn last line from a killed writer is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _clean(value: float | int | str) -> float | int | str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsFile:
    """Appends step records. `start(resume_step)` first drops the records of steps that will be redone.

    After a crash the steps after the last checkpoint are trained again, so the file keeps one record per
    step: the rewrite goes to a temp file and is renamed over the old one (a kill leaves either version).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.high_water = -1  # the last step any earlier attempt logged (W&B cannot take it again)
        self._fh = None

    def start(self, resume_step: int) -> None:
        rows = read_metrics(self.path)
        self.high_water = max((int(r["step"]) for r in rows if "step" in r), default=-1)
        kept = [r for r in rows if int(r.get("step", -1)) < resume_step]
        torn = self.path.exists() and not self.path.read_text().endswith("\n") and self.path.stat().st_size
        if len(kept) != len(rows) or torn:
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a")

    def write(self, record: dict) -> None:
        assert self._fh is not None, "MetricsFile.start() first"
        self._fh.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
