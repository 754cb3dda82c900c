"""The benchmarks' result log: every number printed and the JSON file rewritten at once, so a device run cut off
by its time limit still brings back what it had measured."""

import json
from pathlib import Path

import torch

RESULTS: dict[str, object] = {}
JSON_PATH: list[Path] = []  # set once by the benchmark's main()


def log(key: str, value: object) -> None:
    RESULTS[key] = value
    print(f"{key}: {value}", flush=True)
    if JSON_PATH:
        JSON_PATH[0].write_text(json.dumps(RESULTS, indent=1) + "\n")


def log_environment(device: torch.device) -> None:
    """Versions of torch and of the GPU-only packages, the device, and the kernels the model picks there."""
    from olmo_train.model import ops
    from olmo_train.model.ops.attention import _varlen_kwargs

    log("torch", torch.__version__)
    log("device", torch.cuda.get_device_name() if device.type == "cuda" else "cpu")
    for pkg in ("fla", "triton", "tilelang", "transformers"):
        try:
            log(pkg, getattr(__import__(pkg), "__version__", "?"))
        except Exception as exc:  # noqa: BLE001 - report any import failure
            log(pkg, f"missing ({type(exc).__name__})")
    log("kernels_on_device", ops.kernels_for(device))
    log("attention_with_documents", f"varlen_attn {_varlen_kwargs()}" if device.type == "cuda" and _varlen_kwargs()
        else "SDPA with a block-diagonal causal mask")
