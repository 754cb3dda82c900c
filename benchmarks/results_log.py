"""The benchmarks' result log: every number printed and the JSON file rewritten at once, so a device run cut off
by its time limit still brings back what it had measured."""

import json
from pathlib import Path

RESULTS: dict[str, object] = {}
JSON_PATH: list[Path] = []  # set once by the benchmark's main()


def log(key: str, value: object) -> None:
    RESULTS[key] = value
    print(f"{key}: {value}", flush=True)
    if JSON_PATH:
        JSON_PATH[0].write_text(json.dumps(RESULTS, indent=1) + "\n")
