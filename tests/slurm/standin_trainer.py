"""A small deterministic trainer that follows the trainer's contract (ledger events, preemption, watchdog, fault
hook, checkpoints, metrics.jsonl, exit codes 0/3/1/4) so slurm/pretrain.sh can be tested on its own.

The Slurm tests run the real `olmo-train` when it is installed; this stand-in covers the script's logic meanwhile
and keeps those tests meaningful if the trainer changes. Launched by torchrun (RANK, WORLD_SIZE, MASTER_ADDR).
Overrides: run.dir, trainer.max_steps, checkpoint.interval, standin.step_s, resilience.<field>.
"""

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from olmo_train.resilience import (PREEMPTED_EXIT_CODE, GoodputLedger, PreemptionHandler, ResilienceConfig,
                                   Watchdog, maybe_inject_fault)


def parse(argv: list[str]) -> dict[str, str]:
    return dict(a.lstrip("+").split("=", 1) for a in argv if "=" in a)


def save(run_dir: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    ckpt = run_dir / "checkpoints"
    tmp, final = ckpt / f".tmp-step{step}", ckpt / f"step{step}"
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": step}, tmp / "state.pt")
    tmp.rename(final)
    (ckpt / "latest.tmp").write_text(str(step))
    (ckpt / "latest.tmp").rename(ckpt / "latest")


def main() -> int:
    t_start = time.time()
    args = parse(sys.argv[1:])
    run_dir = Path(args["run.dir"])
    max_steps, interval = int(args.get("trainer.max_steps", 20)), int(args.get("checkpoint.interval", 5))
    step_s = float(args.get("standin.step_s", 0.1))
    rcfg = ResilienceConfig(**{k.split(".", 1)[1]: type(getattr(ResilienceConfig(), k.split(".", 1)[1]))(v)
                               for k, v in args.items() if k.startswith("resilience.")})
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    ledger = GoodputLedger(run_dir, hardware="cpu", world_size=world, rank=rank,
                           step_interval=rcfg.ledger_step_interval)
    ledger.event("attempt_start", pid=os.getpid())
    watchdog = Watchdog(rcfg.watchdog_timeout_s, rcfg.watchdog_startup_timeout_s, ledger=ledger).start()
    preempt = PreemptionHandler(rcfg.signal_check_interval, ledger=ledger).install()
    dist.init_process_group("gloo", timeout=rcfg.collective_timeout)
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ledger.event("init_done", duration_s=time.time() - t_start)
    t0, step = time.time(), 0
    latest = run_dir / "checkpoints" / "latest"
    if latest.exists():
        step = int(latest.read_text())
        state = torch.load(run_dir / "checkpoints" / f"step{step}" / "state.pt", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
    ledger.event("checkpoint_loaded", step=step, duration_s=time.time() - t0)
    metrics = open(run_dir / "metrics.jsonl", "a") if rank == 0 else None
    while step < max_steps:
        maybe_inject_fault(step + 1, rank=rank, run_dir=run_dir)
        begin = time.time()
        g = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(8 * world, 16, generator=g)[rank * 8:(rank + 1) * 8]
        y = x.sum(dim=1, keepdim=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
        opt.step()
        dist.all_reduce(reduced := loss.detach().clone())
        time.sleep(step_s)
        step += 1
        ledger.step_done(step, begin, time.time(), loss=reduced.item() / world)
        if metrics:
            metrics.write(json.dumps({"step": step, "loss": reduced.item() / world}) + "\n")
            metrics.flush()
        watchdog.heartbeat(step)
        stop = preempt.should_stop(step)
        if step % interval == 0 or stop or step == max_steps:
            ledger.flush()
            watchdog.extend()
            begin = time.time()
            if rank == 0:
                save(run_dir, step, model, opt)
            dist.barrier()
            ledger.event("checkpoint_saved", step=step, duration_s=time.time() - begin)
            watchdog.heartbeat(step)
        if stop:
            ledger.event("attempt_end", step=step, reason="preempted", exit_code=PREEMPTED_EXIT_CODE)
            dist.destroy_process_group()
            return PREEMPTED_EXIT_CODE
    ledger.event("attempt_end", step=step, reason="finished", exit_code=0)
    watchdog.stop()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
