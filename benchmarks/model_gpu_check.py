"""GPU check of olmo_train.model: fla kernels vs our PyTorch kernels on the same weights (bf16), packed documents,
and a forward + backward of the 7B-width model (one 3:1 group, full vocab) at sequence 8192.

GPU machine:  source .device/setup.sh && PYTHONUNBUFFERED=1 python3 benchmarks/model_gpu_check.py
CPU (logic only, tiny sizes, torch kernels on both sides):  .venv/bin/python benchmarks/model_gpu_check.py --cpu
Results print as they come and are written as JSON to $OUT/model_gpu_check.json (or --json).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from olmo_train.model import OlmoHybrid, OlmoHybridConfig, ops, presets  # noqa: E402
from results_log import JSON_PATH, log, log_environment  # noqa: E402



def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def attempt(name: str, fn: Callable[[], None]) -> None:
    """Runs one check; a failure is reported under `name.error` and the caller goes on."""
    try:
        fn()
    except Exception:  # keep going: one device call must report every check it can
        log(f"{name}.error", traceback.format_exc(limit=6))


def section(name: str, fn: Callable[[], None]) -> None:
    print(f"\n== {name}", flush=True)
    t0 = time.perf_counter()
    attempt(name, fn)
    log(f"{name}.seconds", round(time.perf_counter() - t0, 1))


def fwd_bwd(model: OlmoHybrid, ids: torch.Tensor, labels: torch.Tensor, doc_lens: torch.Tensor | None,
            kernels: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with ops.use_kernels(kernels):
        logits = model(ids, doc_lens=doc_lens)
        F.cross_entropy(logits.float().flatten(0, 1), labels.flatten()).backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters()}
    return logits.detach().float(), grads


def compare(tag: str, run: tuple, ref: tuple) -> None:
    (logits, grads), (ref_logits, ref_grads) = run, ref
    log(f"{tag}.logits_rel", f"{rel(logits, ref_logits):.2e}")
    flat = torch.cat([g.flatten() for g in grads.values()])
    ref_flat = torch.cat([ref_grads[n].flatten() for n in grads])
    log(f"{tag}.grads_rel_all", f"{rel(flat, ref_flat):.2e}")
    worst = max(grads, key=lambda n: rel(grads[n], ref_grads[n]))
    log(f"{tag}.grads_rel_worst", f"{rel(grads[worst], ref_grads[worst]):.2e} ({worst})")


def parity_config(cpu: bool) -> OlmoHybridConfig:
    """Small model with the 7B head layout (GDN K 96 / V 192, attention head 128): fla compiles these shapes."""
    if cpu:
        return presets.tiny()
    return OlmoHybridConfig(vocab_size=32000, d_model=768, n_layers=4, mlp_hidden=2048, attn_n_heads=6,
                            attn_head_dim=128, rope_theta=500_000.0, gdn_n_heads=30, gdn_head_k_dim=96,
                            gdn_head_v_dim=192)


def model_parity(device: torch.device, cpu: bool) -> None:
    """fla-bf16 and torch-bf16 vs torch-fp32 (the truth), whole model, forward logits and all gradients."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = parity_config(cpu)
    T = 200 if cpu else 1000  # not a multiple of the chunk size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (2, T), generator=gen).to(device)
    labels = torch.randint(0, cfg.vocab_size, (2, T), generator=gen).to(device)
    doc_lens = torch.tensor([T // 3, T - T // 3 - 7, 7, T // 2, T - T // 2])
    with torch.device(device):
        ref_model = OlmoHybrid(cfg)
    bf16_model = copy.deepcopy(ref_model).to(torch.bfloat16)
    fast = "torch" if cpu else "fla"
    runs = [("torch", bf16_model, "torch_bf16")] + ([] if cpu else [("fla", bf16_model, "fla_bf16")])
    for docs, tag in ((None, "rows"), (doc_lens, "packed")):
        ref = fwd_bwd(ref_model, ids, labels, docs, "torch")
        for kernels, model, name in runs:
            attempt(f"parity.{tag}.{name}", lambda: compare(
                f"parity.{tag}.{name}_vs_torch_fp32", fwd_bwd(model, ids, labels, docs, kernels), ref))
    # packed documents = each document alone (fast kernels, fp32 weights)
    with ops.use_kernels(fast), torch.no_grad():
        packed = ref_model(ids[:1, :T], doc_lens=doc_lens[:3])
        alone = torch.cat([ref_model(part) for part in ids[:1, :T].split(doc_lens[:3].tolist(), dim=1)], dim=1)
    log(f"parity.packed_vs_alone.{fast}_fp32.logits_rel", f"{rel(packed, alone):.2e}")


def op_parity(device: torch.device, cpu: bool) -> None:
    """The gated delta rule alone at 7B head dims, bf16 fla vs our fp32 torch kernel, with documents."""
    B, T, H, K, V = (1, 300, 2, 32, 64) if cpu else (1, 4096, 30, 96, 192)
    gen = torch.Generator().manual_seed(1)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device)

    q, k, v = rnd(B, T, H, K), rnd(B, T, H, K), rnd(B, T, H, V)
    g = -F.softplus(rnd(B, T, H)) * 0.3
    beta = 2 * torch.rand(B, T, H, generator=gen).to(device)
    do = rnd(B, T, H, V)
    cu = torch.tensor([0, T // 5, T // 2 + 3, T])
    packing = ops.Packing(cu_seqlens=cu.to(device), cu_seqlens_cpu=cu, max_len=T, positions=None, doc_ids=None)

    def run(dtype: torch.dtype, kernels: str) -> list[torch.Tensor]:
        leaves = [x.detach().clone().to(dtype).requires_grad_() for x in (q, k, v)]
        leaves += [g.detach().clone().requires_grad_(), beta.detach().clone().to(dtype).requires_grad_()]
        with ops.use_kernels(kernels):
            o = ops.gated_delta_rule(*leaves, packing)
        o.backward(do.to(o.dtype))
        return [o.detach()] + [x.grad for x in leaves]

    ref = run(torch.float32, "torch")
    fast = run(torch.bfloat16, "torch" if cpu else "fla")
    for name, a, b in zip(("o", "dq", "dk", "dv", "dg", "dbeta"), fast, ref):
        log(f"op.gdn_bf16_vs_fp32.{name}_rel", f"{rel(a, b):.2e}")


def bench(device: torch.device, cpu: bool, seq_len: int, iters: int) -> None:
    """Forward + backward (cross entropy) of the 7B-width 4-layer model, bf16 parameters, batch 1."""
    cfg = presets.tiny() if cpu else presets.olmo_hybrid_7b_4l()
    T = 256 if cpu else seq_len
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = OlmoHybrid(cfg)
    log("bench.meta_build_s", round(time.perf_counter() - t0, 3))
    t0 = time.perf_counter()
    model.to_empty(device=device)
    model.init_weights(0)
    model.to(torch.bfloat16)
    log("bench.init_weights_s", round(time.perf_counter() - t0, 1))
    log("bench.params", model.num_params())
    ids = torch.randint(0, cfg.vocab_size, (1, T), device=device)
    doc_lens = torch.tensor([T // 2, T // 4, T - T // 2 - T // 4])
    flops = model.flops_per_token(T) * T
    for docs, tag in ((None, "one_doc"), (doc_lens, "three_docs")):
        def step() -> None:
            model.zero_grad(set_to_none=True)
            logits = model(ids, doc_lens=docs)
            F.cross_entropy(logits.float().flatten(0, 1), ids.flatten()).backward()

        for _ in range(2):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / iters
        log(f"bench.{tag}.T{T}.fwd_bwd_ms", round(dt * 1e3, 1))
        log(f"bench.{tag}.tokens_per_s", round(T / dt))
        log(f"bench.{tag}.model_tflops_per_s", round(flops / dt / 1e12, 1))
        if device.type == "cuda":
            log(f"bench.{tag}.peak_mem_gib", round(torch.cuda.max_memory_allocated() / 2**30, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (torch kernels on both sides)")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--skip", default="", help="comma list of sections to skip: parity,op,bench")
    parser.add_argument("--json", default=None, help="output file (default $OUT/model_gpu_check.json)")
    args = parser.parse_args()
    device = torch.device("cpu" if args.cpu else "cuda")
    JSON_PATH.append(Path(args.json or os.path.join(os.environ.get("OUT", "."), "model_gpu_check.json")))
    skip = set(filter(None, args.skip.split(",")))
    section("env", lambda: log_environment(device))
    if "op" not in skip:
        section("op", lambda: op_parity(device, args.cpu))
    if "parity" not in skip:
        section("parity", lambda: model_parity(device, args.cpu))
    if "bench" not in skip:
        section("bench", lambda: bench(device, args.cpu, args.seq_len, args.iters))
    print(f"\nwrote {JSON_PATH[0]}", flush=True)


if __name__ == "__main__":
    main()
