import pytest
import torch

from olmo_train.model import OlmoHybridConfig


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def small_config(**changes) -> OlmoHybridConfig:
    """A few-thousand-parameter hybrid (one 3:1 group) for fast CPU tests."""
    base = dict(vocab_size=96, d_model=64, n_layers=4, mlp_hidden=96, attn_n_heads=4, gdn_n_heads=2,
                rope_theta=10_000.0)
    base.update(changes)
    return OlmoHybridConfig(**base)


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    torch.manual_seed(0)
    yield
