import logging

import pytest
import torch

from olmo_train.checkpoint import CheckpointConfig, CheckpointManager, training_state


class TinyNet(torch.nn.Module):
    """Two layers, an AdamW-trainable stand-in for the model in checkpoint tests."""

    def __init__(self, width: int = 8, out: int = 3) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(width, width), torch.nn.Linear(width, out)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](torch.relu(self.layers[0](x)))


def trained(seed: int = 0, width: int = 8, steps: int = 2) -> tuple[TinyNet, torch.optim.AdamW]:
    torch.manual_seed(seed)
    model = TinyNet(width)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        model(torch.randn(4, width)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def fresh(width: int = 8) -> tuple[TinyNet, torch.optim.AdamW]:
    torch.manual_seed(123)
    model = TinyNet(width)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def save_steps(run_dir, steps, *, ephemeral_steps=(), **cfg_kw) -> CheckpointManager:
    model, opt = trained()
    mgr = CheckpointManager(CheckpointConfig(**cfg_kw), run_dir)
    for step in steps:
        mgr.save(step, training_state(model, opt, {"tokens": step * 10}), ephemeral=step in ephemeral_steps)
    mgr.close()
    return mgr


@pytest.fixture
def ckpt_log(caplog):
    caplog.set_level(logging.INFO, logger="olmo_train.checkpoint")
    return caplog
