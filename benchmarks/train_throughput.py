"""Training throughput on one device: the real step (FSDP2 wrap, optimizer, data loader, Trainer.train_step) of
OLMo Hybrid at 7B width, each speed lever on its own, and the transformers peer on the same shapes.

GPU machine (the planned series, one process, <= 9 minutes; results in benchmarks/RESULTS.md, Speed):
    source .device/setup.sh && export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True && \
        PYTHONUNBUFFERED=1 python3 benchmarks/train_throughput.py --suite --budget-s 425
One configuration:
    ... python3 benchmarks/train_throughput.py --preset olmo_hybrid_7b --layers 4 --seq 8192 --ac selective --loss full
CPU (every code path, tiny sizes; GPU-only levers say 'skipped on cpu'):
    .venv/bin/python benchmarks/train_throughput.py --device cpu --preset tiny --suite
From a saved suite (no GPU): the 32-layer extrapolation and the 8-GPU memory budget:
    .venv/bin/python benchmarks/train_throughput.py --budget-from benchmarks/results/train_throughput_h100_call3.json

Every number is printed and written to $OUT/train_throughput.json (or --json) as it is measured, so a run cut off
by a time limit keeps what it had. Tokens/s and MFU are per GPU; MFU = tokens/s x `model.flops_per_token(seq)` /
989e12 (H100 dense bf16); the same formula for the peer. The 32-layer line extrapolates from two depths:
t(L) = fixed + L/4 x per_group, per_group = t(8) - t(4).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from olmo_train.model import OlmoHybridConfig, presets  # noqa: E402
from results_log import JSON_PATH, RESULTS, log, log_environment  # noqa: E402

FORWARD_END: dict[str, int] = {}  # memory_allocated() at the end of the last forward (ours, CUDA)
PEAK_FLOPS = 989e12  # H100 SXM dense bf16: the MFU denominator
MATMUL_FLOPS = 790e12  # measured bf16 matmul 8192^3 on the device (DESIGN.md): the FLOP floor
HBM_BYTES_PER_S = 3e12  # H100 HBM3, rounded down from 3.35 TB/s: the byte floor


@dataclass(frozen=True)
class Run:
    """One configuration to measure; every field but `name` is a lever."""

    name: str
    layers: int = 4
    compile: bool = True
    ac: str = "none"  # the 7B recipe on 80 GB (configs/experiment/olmo_hybrid_7b.yaml; memory_budget shows it fits)
    loss: str = "fused"  # fused | chunked | full (trainer.loss_impl) | fla (fla's fused linear CE: no z-loss)
    loss_chunk: int = 0  # tokens per chunk; 0 = the implementation's default
    adamw: str = "auto"  # trainer.optimizer.impl: auto (fused on CUDA) | fused | foreach
    attn: str = "varlen"  # real data has documents: varlen flash attention on CUDA
    norm: str = "ours"
    gdn_l2norm: str = "kernel"
    reshard: bool = True  # FSDP2 reshard_after_forward (False: blocks keep their gathered weights until backward)
    peer: bool = False

    def gpu_only(self) -> str | None:
        """Why this run cannot run on the CPU, or None."""
        if self.attn in ("flash", "cudnn", "efficient"):
            return f"attn={self.attn} is a CUDA SDPA backend"
        if self.norm == "fla" or self.gdn_l2norm != "kernel" or self.loss == "fla":
            return "fla kernels need CUDA"
        return None


# ---- the model side: levers that patch a kernel for the duration of one run ---------------------------------

@contextlib.contextmanager
def norm_impl(kind: str) -> Iterator[None]:
    """'ours' (float32 torch ops; fused by compile), 'torch' (F.rms_norm), 'fla' (fla's Triton RMSNorm and
    fused gated RMSNorm). Patches the classes, so it must wrap the model's build and its steps."""
    from olmo_train.model.common.norm import GatedRMSNorm, RMSNorm

    saved = RMSNorm.forward, GatedRMSNorm.forward
    if kind == "torch":
        RMSNorm.forward = lambda self, x: torch.nn.functional.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        GatedRMSNorm.forward = lambda self, x, gate: (torch.nn.functional.rms_norm(
            x, (x.shape[-1],), self.weight, self.eps) * torch.nn.functional.silu(gate)).to(x.dtype)
    elif kind == "fla":
        from fla.modules.norm.fused_norm_gate import rms_norm_gated
        from fla.modules.norm.layernorm import rms_norm

        plain, gated = torch.compiler.disable(rms_norm), torch.compiler.disable(rms_norm_gated)  # as fla_shim
        RMSNorm.forward = lambda self, x: plain(x, self.weight, None, eps=self.eps)
        GatedRMSNorm.forward = lambda self, x, gate: gated(x, gate, self.weight, None, activation="swish",
                                                           eps=self.eps)
    try:
        yield
    finally:
        RMSNorm.forward, GatedRMSNorm.forward = saved


@contextlib.contextmanager
def gdn_l2norm(where: str) -> Iterator[None]:
    """'kernel': q, k L2-normalised inside fla's chunk kernel (ours); 'separate': fla's l2norm kernel first."""
    from olmo_train.model.ops import fla_shim

    saved = fla_shim.chunk_gated_delta_rule
    if where == "separate":
        from fla.modules.norm.l2norm import l2norm
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        def separate(q, k, v, g, beta, *, cu_seqlens, cu_seqlens_cpu):
            o, _ = chunk_gated_delta_rule(l2norm(q), l2norm(k), v, g, beta, use_qk_l2norm_in_kernel=False,
                                          cu_seqlens=cu_seqlens, cu_seqlens_cpu=cu_seqlens_cpu)
            return o

        fla_shim.chunk_gated_delta_rule = separate
    try:
        yield
    finally:
        fla_shim.chunk_gated_delta_rule = saved


@contextlib.contextmanager
def head_loss(loss: str, chunk: int) -> Iterator[None]:
    """The function the trainer runs in the head for its loss_impl, with `chunk` tokens per chunk (0 = default);
    or, in place of the chunked one, fla's fused linear cross-entropy (gradients in forward, Triton CE kernels;
    it has no z-loss, so z_sum is 0)."""
    from olmo_train.train import losses, trainer

    name = {"fused": "fused_lm_loss", "chunked": "chunked_lm_loss_sums", "fla": "chunked_lm_loss_sums"}.get(loss)
    if name is None or (chunk == 0 and loss != "fla"):
        yield
        return
    saved = getattr(trainer, name)
    if loss == "fla":
        from fla.modules.fused_linear_cross_entropy.ops import fused_linear_cross_entropy_loss

        def fla_loss(hidden: torch.Tensor, weight: torch.Tensor, *, labels: torch.Tensor):
            ce = fused_linear_cross_entropy_loss(hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1), weight,
                                                 reduction="sum")
            return ce, torch.zeros_like(ce)

        setattr(trainer, name, fla_loss)
    else:
        setattr(trainer, name, functools.partial(getattr(losses, name), chunk_tokens=chunk))
    try:
        yield
    finally:
        setattr(trainer, name, saved)


def sdpa_backend(attn: str) -> contextlib.AbstractContextManager:
    """Forces one SDPA backend for 'flash' | 'cudnn' | 'efficient'; otherwise SDPA chooses."""
    if attn not in ("flash", "cudnn", "efficient"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                        "efficient": SDPBackend.EFFICIENT_ATTENTION}[attn])


class InitCache:
    """Replaces `OlmoHybrid.init_weights` during the benchmark: each parameter is drawn once (the real per-name
    initialiser, ~11 s per 1.6 B values on the CPU) and copied from a host cache into every later model. Valid
    for one process (each local shard is the whole tensor)."""

    def __init__(self) -> None:
        self.values: dict[str, torch.Tensor] = {}

    def init_weights(self, model: torch.nn.Module, seed: int) -> None:
        from olmo_train.model.common.init import default_spec, init_parameter

        for module_name, module in model.named_modules():
            for local_name, param in module.named_parameters(recurse=False):
                name = f"{module_name}.{local_name}" if module_name else local_name
                local = param.to_local() if hasattr(param, "to_local") else param
                key = f"{seed}:{name}:{tuple(local.shape)}"
                if key in self.values:
                    local.copy_(self.values[key])
                else:
                    init_parameter(param, default_spec(module, local_name, model.config.init_std), seed, name)
                    self.values[key] = local.detach().to("cpu", copy=True)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from olmo_train.model import OlmoHybrid

        saved = OlmoHybrid.init_weights
        OlmoHybrid.init_weights = lambda model, seed: self.init_weights(model, seed)
        try:
            yield
        finally:
            OlmoHybrid.init_weights = saved


# ---- data ---------------------------------------------------------------------------------------------------

def synthetic_tokens(path: Path, *, vocab: int, eos: int, n_tokens: int, mean_doc: int, seed: int = 0) -> Path:
    """A raw uint32 token file: uniform random ids with an EOS closing documents of geometric length."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, n_tokens, dtype=np.uint32)
    tokens[tokens == eos] = 1
    ends = np.cumsum(rng.geometric(1.0 / mean_doc, size=n_tokens // max(1, mean_doc // 2) + 1))
    tokens[ends[ends < n_tokens]] = eos
    tokens.tofile(path)
    return path


# ---- ours: the trainer's own step ---------------------------------------------------------------------------

def model_config(args: argparse.Namespace, layers: int) -> OlmoHybridConfig:
    cfg = presets.get(args.preset)
    return replace(cfg, n_layers=layers) if layers != cfg.n_layers else cfg


def build_ours(run: Run, args: argparse.Namespace, device: torch.device, token_file: Path) -> tuple[Callable, dict]:
    """Builds backend + loader + Trainer exactly as `olmo-train` does (FSDP2, one rank); returns (step, info)."""
    from olmo_train.data import DataConfig, build_train_loader
    from olmo_train.distributed.backend import BuildSpec, build_backend
    from olmo_train.distributed.config import FSDP2Config
    from olmo_train.train.config import ClusterConfig, Config, TrainerConfig
    from olmo_train.train.metrics import MetricsTracker
    from olmo_train.train.optim import OptimizerConfig
    from olmo_train.train.trainer import Trainer

    mcfg = model_config(args, run.layers)
    tokens = args.micro_batch * args.seq
    tcfg = TrainerConfig(max_steps=10**6, global_batch_tokens=tokens, seq_len=args.seq,
                         micro_batch_size=args.micro_batch, loss_impl="chunked" if run.loss == "fla" else run.loss,
                         optimizer=OptimizerConfig(impl=run.adamw))
    dcfg = FSDP2Config(param_dtype="bfloat16", reduce_dtype="float32", activation_checkpointing=run.ac,
                       compile=run.compile, reshard_after_forward=run.reshard)
    cfg = Config(model=mcfg, trainer=tcfg, distributed=dcfg,
                 cluster=ClusterConfig(name=device.type, device=device.type, peak_flops=PEAK_FLOPS))
    backend = build_backend(dcfg, BuildSpec(
        model_config=mcfg, optimizer=tcfg.optimizer, grad_clip=tcfg.grad_clip, seed=0, device=device, world_size=1,
        micro_batch_size=args.micro_batch, accum_steps=1, seq_len=args.seq))
    data = DataConfig(sources=[str(token_file)], dtype="uint32", eos_token_id=mcfg.eos_token_id or 0,
                      document_mask=run.attn == "varlen", cache_dir=str(token_file.parent / "cache"))
    loader = build_train_loader(data, seq_len=args.seq, global_batch_size=args.micro_batch,
                                micro_batch_size=args.micro_batch, rank=0, world_size=1, seed=0, device=device,
                                vocab_size=mcfg.vocab_size)
    tracker = MetricsTracker(world_size=1, flops_per_token=backend.flops_per_token, peak_flops=PEAK_FLOPS,
                             z_loss_weight=tcfg.z_loss, device=device)
    trainer = Trainer(cfg=cfg, backend=backend, loader=loader, manager=None, tracker=tracker, device=device,
                      world_size=1, rank=0)
    batches = loader.iter_from(0)
    lr = tcfg.optimizer.lr
    if device.type == "cuda":  # memory held when forward ends: what backward starts with (memory_budget)
        backend.model.register_forward_hook(
            lambda *_: FORWARD_END.__setitem__("bytes", torch.cuda.memory_allocated()))

    def step() -> torch.Tensor:
        _, micro_batches = next(batches)
        sums = trainer.train_step(micro_batches, lr)
        return sums["ce_sum"] / sums["n_tokens"]  # mean cross-entropy (no host sync)

    step.close = batches.close  # type: ignore[attr-defined]
    return step, {"params": backend.num_params, "flops_per_token": backend.flops_per_token, "tokens": tokens}


# ---- the peer: transformers' OlmoHybridForCausalLM, plain fused AdamW, bf16 autocast -----------------------

def peer_kernels() -> dict[str, str]:
    """Where transformers' olmo_hybrid takes its GDN and conv kernels from (fla / causal_conv1d / torch)."""
    import transformers.models.olmo_hybrid.modeling_olmo_hybrid as hf_mod

    found = {}
    for name in ("chunk_gated_delta_rule", "causal_conv1d_fn"):
        fn = getattr(hf_mod, name, None)
        cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if callable(c.cell_contents)]
        impls = {f"{getattr(c, '__module__', '?')}.{getattr(c, '__name__', '?')}" for c in cells}
        found[name] = ", ".join(sorted(impls)) or "unknown (see transformers' fallback warnings above)"
    return found


def build_peer(run: Run, args: argparse.Namespace, device: torch.device, token_file: Path) -> tuple[Callable, dict]:
    """Same shapes as ours (olmo_train.model.hf maps the config); the data are the same token file's rows."""
    from transformers import OlmoHybridConfig as HFConfig
    from transformers import OlmoHybridForCausalLM

    from olmo_train.model import hf

    hf_cfg = HFConfig.from_dict(hf.to_hf_config(model_config(args, run.layers)))
    hf_cfg._attn_implementation = "sdpa"
    with torch.device(device):
        model = OlmoHybridForCausalLM(hf_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=True)
    rows = np.fromfile(token_file, dtype=np.uint32)
    tokens = args.micro_batch * args.seq
    state = {"at": 0}

    def step() -> torch.Tensor:
        start = state["at"] % (len(rows) - tokens)
        state["at"] += tokens
        ids = torch.from_numpy(rows[start:start + tokens].astype(np.int64)).view(args.micro_batch, args.seq)
        ids = ids.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    n = sum(p.numel() for p in model.parameters())
    emb = model.model.embed_tokens.weight.numel()
    n_attn = sum(kind == "full_attention" for kind in hf_cfg.layer_types)
    flops = 6 * (n - emb) + 6 * n_attn * hf_cfg.num_attention_heads * hf_cfg.head_dim * args.seq
    log(f"{run.name}.kernels", peer_kernels())
    return step, {"params": n, "flops_per_token": float(flops), "tokens": tokens}


# ---- timing and profiling -----------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Callable, device: torch.device, iters: int) -> tuple[list[float], float]:
    """(seconds per step, wall seconds per step). On the GPU an event is recorded between steps and the host
    synchronises only at the end, so the CPU may run ahead as in training."""
    sync(device)
    t0 = time.perf_counter()
    if device.type != "cuda":
        times = []
        for _ in range(iters):
            t1 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t1)
        return times, (time.perf_counter() - t0) / iters
    events = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
    events[0].record()
    for i in range(iters):
        step()
        events[i + 1].record()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / iters
    return [a.elapsed_time(b) / 1e3 for a, b in zip(events, events[1:])], wall


CATEGORIES = (  # first match wins; kernel (GPU) or op (CPU) names, lower case
    ("comm", ("nccl", "all_gather", "reduce_scatter", "allreduce", "all_reduce")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
    ("gdn", ("gated_delta", "chunk_", "tilelang", "wy_", "fwd_h", "bwd_dh", "recompute_w", "solve_tril", "kkt",
             "cumsum", "l2norm")),
    ("conv", ("conv",)),
    ("optimizer", ("adam", "multi_tensor", "foreach", "_amp_")),
    ("loss", ("logsumexp", "log_softmax", "softmax", "nll", "cross_entropy", "scatter", "gather")),
    ("norm", ("norm", "rsqrt")),
    ("matmul", ("gemm", "nvjet", "cutlass", "sm90", "xmma", "aten::mm", "aten::addmm", "aten::bmm", "matmul",
                "linear")),
    ("copy/cast", ("copy", "cast", "to_copy", "fill", "cat", "memcpy", "memset")),
)


def categorise(name: str) -> str:
    low = name.lower()
    return next((cat for cat, keys in CATEGORIES if any(k in low for k in keys)), "elementwise/other")


def write_trace(prof, path: Path) -> None:
    import gzip
    import shutil

    raw = path.with_suffix("")  # x.json.gz -> x.json
    prof.export_chrome_trace(str(raw))
    with open(raw, "rb") as src, gzip.open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    raw.unlink()
    log(f"trace.{path.name}", f"{path.stat().st_size / 1e6:.1f} MB")


def is_annotation(event) -> bool:
    """User ranges (record_function: the optimizer's step, FSDP's phases) span kernels that are counted on their
    own; counting the range too would count that time twice."""
    name = event.key
    return bool(getattr(event, "is_user_annotation", False)) or "#" in name or name.startswith(
        ("FSDP::", "ProfilerStep", "## "))


def profile_steps(step: Callable, device: torch.device, n: int, top: int, trace: Path | None = None) -> dict:
    """Per-op breakdown of `n` steps: self time per kernel (GPU) or op (CPU), top entries and categories.
    `trace`: also write the steps' timeline there (gzipped Chrome trace: where the GPU waits on the host)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync(device)
        wall = (time.perf_counter() - t0) / n
    if trace is not None:
        write_trace(prof, trace)
    events = [e for e in prof.key_averages() if not is_annotation(e)]
    if device.type == "cuda":
        rows = [(e.key, e.self_device_time_total, e.count) for e in events if e.device_type == DeviceType.CUDA]
    else:
        rows = [(e.key, e.self_cpu_time_total, e.count) for e in events]
    rows = [r for r in rows if r[1] > 0]
    total = sum(r[1] for r in rows) or 1.0
    rows.sort(key=lambda r: -r[1])
    cats: dict[str, float] = {}
    for name, us, _ in rows:
        cats[categorise(name)] = cats.get(categorise(name), 0.0) + us
    return {
        "ms_per_step_profiled": round(total / n / 1e3, 2),
        "wall_ms_per_step_profiled": round(wall * 1e3, 2),  # above the kernels' sum: the GPU waited on the host
        "categories_pct": {k: round(100 * v / total, 1) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
        "categories_ms": {k: round(v / n / 1e3, 2) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
        "top": [{"op": name[:90], "ms_per_step": round(us / n / 1e3, 3), "pct": round(100 * us / total, 1),
                 "calls_per_step": count // n} for name, us, count in rows[:top]],
    }


def measure(run: Run, args: argparse.Namespace, device: torch.device, token_file: Path, cache: InitCache,
            profile: bool) -> None:
    """Builds, warms up, times and (optionally) profiles one run; logs every number under `run.name`."""
    skip = run.gpu_only() if device.type == "cpu" else None
    if skip:
        log(f"{run.name}.skipped", f"skipped on cpu ({skip})")
        return
    log(f"{run.name}.levers", {k: v for k, v in asdict(run).items() if k != "name"})
    FORWARD_END.clear()
    step = None
    with norm_impl(run.norm), gdn_l2norm(run.gdn_l2norm), head_loss(run.loss, run.loss_chunk), \
            sdpa_backend(run.attn), cache.installed():
        try:
            t0 = time.perf_counter()
            step, info = (build_peer if run.peer else build_ours)(run, args, device, token_file)
            log(f"{run.name}.build_s", round(time.perf_counter() - t0, 1))
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                step()
            sync(device)
            log(f"{run.name}.warmup_s", round(time.perf_counter() - t0, 1))
            if device.type == "cuda":  # weights + optimizer state between steps: the rest of the peak is dynamic
                log(f"{run.name}.static_mem_gib", round(torch.cuda.memory_allocated() / 2**30, 2))
                torch.cuda.reset_peak_memory_stats()
            times, wall = time_steps(step, device, args.iters)
            report(run, info, times, device)
            if "bytes" in FORWARD_END:  # the last timed step's (ours only: the hook is on our model)
                log(f"{run.name}.after_forward_gib", round(FORWARD_END["bytes"] / 2**30, 2))
            log(f"{run.name}.wall_ms_per_step", round(wall * 1e3, 2))
            log(f"{run.name}.loss_after", round(float(step()), 4))  # ln(vocab) at the start: a sanity check
            if profile:
                trace = JSON_PATH[-1].parent / f"{run.name}.trace.json.gz" if args.trace else None
                log(f"{run.name}.profile", profile_steps(step, device, n=2, top=args.top_ops, trace=trace))
        finally:
            if step is not None and hasattr(step, "close"):
                step.close()
            del step
            release(device)


def report(run: Run, info: dict, times: list[float], device: torch.device) -> None:
    dt = statistics.median(times)
    tps = info["tokens"] / dt
    log(f"{run.name}.params", info["params"])
    log(f"{run.name}.step_ms", {"median": round(dt * 1e3, 2), "min": round(min(times) * 1e3, 2),
                                "max": round(max(times) * 1e3, 2), "steps": len(times)})
    log(f"{run.name}.tokens_per_s", round(tps))
    log(f"{run.name}.mfu", round(tps * info["flops_per_token"] / PEAK_FLOPS, 4))
    if device.type == "cuda":
        log(f"{run.name}.peak_mem_gib", round(torch.cuda.max_memory_allocated() / 2**30, 2))
        log(f"{run.name}.peak_reserved_gib", round(torch.cuda.max_memory_reserved() / 2**30, 2))


def release(device: torch.device) -> None:
    """Frees the previous run's model and compiled graphs (dynamo's cache would otherwise fill with old
    modules and fall back to eager)."""
    torch.compiler.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- floors and extrapolation -------------------------------------------------------------------------------

def activation_elems_per_token(cfg: OlmoHybridConfig, kind: str) -> int:
    """Elements per token of the main tensors one block produces in forward (inputs of the next op)."""
    d = cfg.d_model
    mlp = 3 * cfg.mlp_hidden + 4 * d  # MLP: gate, up, act*up; norm, residual, down, input
    if kind == "gdn":
        key, value = cfg.gdn_n_heads * cfg.gdn_head_k_dim, cfg.gdn_n_v_heads * cfg.gdn_head_v_dim
        mixer = 2 * (2 * key + value) + 2 * cfg.gdn_n_v_heads + 4 * value + 2 * d  # proj, conv, a/b, gate/o/norm
    else:
        width = cfg.attn_n_heads * cfg.attn_head_dim
        mixer = 8 * width + 3 * d  # q/k/v, qk-norm, rope, output; o_proj, norm, residual
    return mixer + mlp


def floors(cfg: OlmoHybridConfig, tokens: int, seq: int) -> dict[str, float]:
    """Lower bounds on one step's time from FLOPs (at the measured matmul rate) and from HBM bytes.

    Bytes: 46 per parameter (bf16 copy of the fp32 weight 6; weight read in forward and backward 4; bf16 gradient
    written and taken to fp32 8; fused AdamW reads weight, gradient, two moments and writes three 28); 14 x vocab
    per token for the head (bf16 logits written and read in forward and again when recomputed, their gradient
    written and read twice); every block activation written and read in forward, and its gradient and the saved
    value read/written in backward (5 passes of 2 bytes).
    """
    from olmo_train.model import OlmoHybrid

    with torch.device("meta"):
        model = OlmoHybrid(cfg)
    flops = model.flops_per_token(seq) * tokens
    recompute = 2 * cfg.d_model * cfg.vocab_size * tokens  # the chunked loss's second head matmul
    acts = sum(activation_elems_per_token(cfg, kind) for kind in cfg.block_kinds) * tokens * 2 * 5
    weights = 46 * model.num_params()
    head = 14 * cfg.vocab_size * tokens
    return {"model_tflop": round(flops / 1e12, 2), "loss_recompute_tflop": round(recompute / 1e12, 2),
            "flop_floor_ms": round(flops / MATMUL_FLOPS * 1e3, 1),
            "flop_floor_with_recompute_ms": round((flops + recompute) / MATMUL_FLOPS * 1e3, 1),
            "bytes_gb": {"weights_optimizer": round(weights / 1e9, 1), "head_logits": round(head / 1e9, 1),
                         "activations": round(acts / 1e9, 1)},
            "byte_floor_ms": round((weights + head + acts) / HBM_BYTES_PER_S * 1e3, 1)}


def extrapolate(args: argparse.Namespace, short: str, long: str) -> None:
    """Step time at 32 layers from the 4- and 8-layer runs (same levers): the per-group cost is the difference.

    On one GPU the optimizer updates every parameter; with FSDP over N GPUs each updates 1/N of them. The
    `fsdp8_*` numbers therefore take 7/8 of the profiled optimizer time out (communication not included: per
    block it is ~8 bytes/parameter over NVLink, a few ms against a block's tens of ms of compute, and FSDP2
    overlaps it).
    """
    t4, t8 = (RESULTS.get(f"{name}.step_ms", {}).get("median") for name in (short, long))
    if not (t4 and t8):
        log(f"extrapolation.{short}.skipped", f"needs both {short} and {long}")
        return
    per_group = t8 - t4
    t32 = t4 + 7 * per_group
    tokens = args.micro_batch * args.seq
    flops = floors(model_config(args, 32), tokens, args.seq)["model_tflop"] * 1e12
    out = {"per_group_ms": round(per_group, 2), "fixed_ms": round(t4 - per_group, 2), "step_ms": round(t32, 1),
           "tokens_per_s": round(tokens / t32 * 1e3), "mfu": round(flops / (t32 / 1e3) / PEAK_FLOPS, 4)}
    o4, o8 = (RESULTS.get(f"{name}.profile", {}).get("categories_ms", {}).get("optimizer") for name in (short, long))
    if o4 is not None and o8 is not None:
        opt32 = o4 + 7 * (o8 - o4)
        t_fsdp8 = t32 - opt32 * 7 / 8
        out.update({"optimizer_ms_1gpu": round(opt32, 1), "fsdp8_step_ms": round(t_fsdp8, 1),
                    "fsdp8_tokens_per_s_per_gpu": round(tokens / t_fsdp8 * 1e3),
                    "fsdp8_mfu": round(flops / (t_fsdp8 / 1e3) / PEAK_FLOPS, 4)})
    log(f"extrapolation.{short}.32_layers", out)


def memory_budget(args: argparse.Namespace, short: str, long: str, gpus: int = 8) -> None:
    """Peak memory per GPU of the full 32-layer model under FSDP over `gpus` GPUs, from the 4- and 8-layer runs
    on one GPU (same levers).

    Each run logs its static memory (fp32 weights + AdamW moments, between steps) and the memory held when the
    forward ends (static + what backward needs: every block's saved activations, the loss's stored head
    gradients, gathered root parameters). Their difference grows by 4 layers' activations from 4 to 8 layers;
    the rest is fixed. The peak under FSDP comes as backward starts: sharded static state and fp32 gradients
    (16 bytes/param / gpus) + 32 layers' activations + the fixed part + the backward working set: the root's
    embedding and head gathered again in bf16 (2 bytes/param), and one block's gathered bf16 weights and bf16
    gradient, fp32 reduce-scatter input and the next block's prefetched weights (10 bytes per parameter of the
    largest block). Not included: NCCL buffers and allocator fragmentation (the headroom must cover them).
    """
    need = [f"{name}.{key}" for name in (short, long) for key in ("static_mem_gib", "after_forward_gib", "params")]
    if any(key not in RESULTS for key in need):
        log(f"memory_budget.{short}.skipped", f"needs {need}")
        return
    from olmo_train.model import OlmoHybrid

    gib = 2**30
    held = {name: RESULTS[f"{name}.after_forward_gib"] - RESULTS[f"{name}.static_mem_gib"] for name in (short, long)}
    per_layer = (held[long] - held[short]) / 4
    fixed = held[short] - 4 * per_layer
    with torch.device("meta"):
        model = OlmoHybrid(model_config(args, 32))
    params32 = model.num_params()
    block = max(sum(p.numel() for p in b.parameters()) for b in model.blocks)
    root = params32 - sum(p.numel() for p in model.blocks.parameters())
    sharded = 16 * params32 / gpus / gib
    working = (10 * block + 2 * root) / gib
    total = sharded + 32 * per_layer + fixed + working
    capacity = RESULTS.get("device_memory_gib", 80.0)
    log(f"memory_budget.{short}.32_layers_fsdp{gpus}", {
        "params": params32, "sharded_state_and_grads_gib": round(sharded, 2),
        "activations_per_layer_gib": round(per_layer, 3), "activations_gib": round(32 * per_layer, 2),
        "fixed_at_backward_start_gib": round(fixed, 2), "backward_working_set_gib": round(working, 2),
        "peak_gib": round(total, 2), "gpu_gib": round(capacity, 1), "headroom_gib": round(capacity - total, 2),
        "micro_batch": args.micro_batch, "seq": args.seq})


# ---- the suite ----------------------------------------------------------------------------------------------

def suite_runs() -> list[Run]:
    """The planned series, most important first (the time budget cuts from the end): ours and its depth twin
    (32-layer extrapolation and memory budget), the peer, then each lever alone against ours."""
    base = Run("ours")
    return [
        base,
        replace(base, name="ours_8l", layers=8),
        Run("peer", peer=True, compile=False, ac="none", loss="full", adamw="fused", attn="sdpa"),
        replace(base, name="ac_selective", ac="selective"),
        replace(base, name="attn_sdpa_rows", attn="sdpa"),
        replace(base, name="adamw_foreach", adamw="foreach"),
        replace(base, name="loss_chunked", loss="chunked"),
        replace(base, name="loss_full", loss="full"),
        replace(base, name="no_compile", compile=False),
        replace(base, name="ac_selective_8l", ac="selective", layers=8),
        replace(base, name="ac_full", ac="full"),
        replace(base, name="norm_fla", norm="fla"),
        replace(base, name="gdn_l2norm_separate", gdn_l2norm="separate"),
        replace(base, name="loss_fla", loss="fla"),
        replace(base, name="attn_cudnn_rows", attn="cudnn"),
        replace(base, name="norm_torch", norm="torch"),
        replace(base, name="loss_fused_4096", loss_chunk=4096),
        replace(base, name="no_reshard", reshard=False),
    ]


PROFILED = ("ours", "ours_8l", "run")
DEPTH_PAIRS = (("ours", "ours_8l"), ("ac_selective", "ac_selective_8l"))


def single_run(args: argparse.Namespace) -> Run:
    return Run("run", layers=args.layers, compile=args.compile == "on", ac=args.ac, loss=args.loss,
               loss_chunk=args.loss_chunk, adamw=args.adamw, attn=args.attn, norm=args.norm,
               gdn_l2norm=args.gdn_l2norm, reshard=args.reshard == "on", peer=args.peer)


def summary_table() -> None:
    names = [k[: -len(".tokens_per_s")] for k in RESULTS if k.endswith(".tokens_per_s")]
    base = RESULTS.get("ours.tokens_per_s")
    print(f"\n{'run':<22}{'step ms':>10}{'tokens/s':>11}{'MFU':>8}{'peak GiB':>10}{'vs ours':>9}")
    for name in names:
        tps = RESULTS[f"{name}.tokens_per_s"]
        ratio = f"{tps / base:.2f}x" if base else "-"
        print(f"{name:<22}{RESULTS[f'{name}.step_ms']['median']:>10.1f}{tps:>11,}{RESULTS[f'{name}.mfu']:>8.3f}"
              f"{RESULTS.get(f'{name}.peak_mem_gib', '-'):>10}{ratio:>9}")
    for key in [k for k in RESULTS if k.endswith(".skipped") or k.endswith(".error")]:
        print(f"{key}: {str(RESULTS[key]).splitlines()[-1]}")
    profiled = next((name for name in ("ours", "run") if f"{name}.profile" in RESULTS), None)
    if profiled:
        prof = RESULTS[f"{profiled}.profile"]
        print(f"{profiled}, profiled ({prof['ms_per_step_profiled']} ms of kernels per step): {prof['categories_pct']}")
        for row in prof["top"][:12]:
            print(f"  {row['pct']:5.1f}%  {row['ms_per_step']:8.3f} ms  x{row['calls_per_step']:<5} {row['op']}")
    for key in [k for k in RESULTS if k.startswith(("extrapolation.", "memory_budget."))]:
        print(f"{key}: {RESULTS[key]}")


def init_process_group(device: torch.device) -> None:
    """One rank: FSDP2 needs a process group and a mesh even alone."""
    if device.type == "cuda":
        torch.cuda.set_device(0)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def environment(device: torch.device) -> None:
    log_environment(device)
    log("env.FLA", {k: v for k, v in os.environ.items() if k.startswith("FLA_")})
    if device.type == "cuda":
        log("device_memory_gib", round(torch.cuda.get_device_properties(0).total_memory / 2**30, 2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--preset", default=None, help="model preset (default olmo_hybrid_7b on cuda, tiny on cpu)")
    ap.add_argument("--layers", type=int, default=4, help="depth of the single run (a multiple of 4)")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default 8192 on cuda, 256 on cpu)")
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--compile", default="on", choices=("on", "off"), help="per-block torch.compile")
    ap.add_argument("--ac", default="none", choices=("none", "full", "selective"))
    ap.add_argument("--loss", default="fused", choices=("fused", "chunked", "full", "fla"),
                    help="fla: fla's fused linear cross-entropy (no z-loss; CUDA only)")
    ap.add_argument("--loss-chunk", type=int, default=0, help="tokens per loss chunk (0 = the loss's default)")
    ap.add_argument("--adamw", default="auto", choices=("auto", "fused", "foreach"))
    ap.add_argument("--attn", default="varlen", choices=("varlen", "sdpa", "flash", "cudnn", "efficient"),
                    help="varlen: documents (varlen flash on CUDA); the others: whole rows through SDPA")
    ap.add_argument("--norm", default="ours", choices=("ours", "torch", "fla"))
    ap.add_argument("--gdn-l2norm", default="kernel", choices=("kernel", "separate"))
    ap.add_argument("--reshard", default="on", choices=("on", "off"), help="FSDP2 reshard_after_forward")
    ap.add_argument("--peer", action="store_true", help="transformers' OlmoHybridForCausalLM instead of ours")
    ap.add_argument("--suite", action="store_true", help="the planned series (ignores the lever flags)")
    ap.add_argument("--runs", default="", help="suite: only these runs (comma list of names, e.g. ac_full,norm_torch)")
    ap.add_argument("--budget-s", type=float, default=440.0, help="suite: start no run after this many seconds")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--top-ops", type=int, default=25)
    ap.add_argument("--trace", action="store_true", help="profiled runs also write <run>.trace.json.gz beside the JSON")
    ap.add_argument("--mean-doc", type=int, default=3000, help="mean document length of the synthetic data")
    ap.add_argument("--json", default=None, help="output file (default $OUT/train_throughput.json)")
    ap.add_argument("--budget-from", default=None, metavar="JSON",
                    help="no runs: recompute the 32-layer extrapolation and memory budget from a suite's results")
    args = ap.parse_args(argv)
    cpu = args.device == "cpu"
    args.preset = args.preset or ("tiny" if cpu else "olmo_hybrid_7b")
    args.seq = args.seq or (256 if cpu else 8192)
    if cpu:
        args.warmup, args.iters = min(args.warmup, 2), min(args.iters, 3)
    return args


def recompute(args: argparse.Namespace) -> None:
    """Extrapolation and memory budget from a saved suite (e.g. benchmarks/results/*.json), without a GPU."""
    import json

    RESULTS.update(json.loads(Path(args.budget_from).read_text()))
    shape = RESULTS.get("shape", {})
    args.preset, args.seq = shape.get("preset", args.preset), shape.get("seq", args.seq)
    args.micro_batch = shape.get("micro_batch", args.micro_batch)
    for short, long in DEPTH_PAIRS:
        extrapolate(args, short, long)
        memory_budget(args, short, long)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.budget_from:
        return recompute(args)
    device = torch.device(args.device)
    JSON_PATH.append(Path(args.json or os.path.join(os.environ.get("OUT", "."), "train_throughput.json")))
    start = time.perf_counter()
    environment(device)
    log("shape", {"preset": args.preset, "seq": args.seq, "micro_batch": args.micro_batch})
    log("floors.4_layers", floors(model_config(args, 4), args.micro_batch * args.seq, args.seq))
    init_process_group(device)
    cache = InitCache()
    runs = suite_runs() if args.suite else [single_run(args)]
    if args.suite and args.runs:
        wanted = set(args.runs.split(","))
        runs = [run for run in runs if run.name in wanted]
        if not runs:
            raise SystemExit(f"--runs {args.runs}: no such run; valid: {[r.name for r in suite_runs()]}")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = model_config(args, 4)
        token_file = synthetic_tokens(Path(tmp) / "tokens.bin", vocab=cfg.vocab_size, eos=cfg.eos_token_id or 0,
                                      n_tokens=max(4_000_000, 40 * args.micro_batch * args.seq),
                                      mean_doc=args.mean_doc)
        for run in runs:
            elapsed = time.perf_counter() - start
            if args.suite and elapsed > args.budget_s:
                log(f"{run.name}.skipped", f"time budget: {elapsed:.0f} s > --budget-s {args.budget_s:.0f}")
                continue
            print(f"\n== {run.name} ({elapsed:.0f} s)", flush=True)
            try:
                measure(run, args, device, token_file, cache, profile=run.name in PROFILED)
            except Exception:  # one device call must report every run it can
                log(f"{run.name}.error", traceback.format_exc(limit=8))
    if args.suite:
        for short, long in DEPTH_PAIRS:
            extrapolate(args, short, long)
            memory_budget(args, short, long)
    log("total_s", round(time.perf_counter() - start, 1))
    summary_table()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
