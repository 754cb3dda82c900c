from datetime import timedelta

import pytest

from olmo_train.errors import ConfigError
from olmo_train.resilience.config import ResilienceConfig


def test_defaults_valid_and_timeout():
    cfg = ResilienceConfig()
    assert cfg.collective_timeout == timedelta(seconds=cfg.collective_timeout_s)
    assert ResilienceConfig(watchdog_timeout_s=0, watchdog_startup_timeout_s=0).watchdog_timeout_s == 0


@pytest.mark.parametrize("kwargs, field", [
    ({"watchdog_timeout_s": -1}, "watchdog_timeout_s"),
    ({"watchdog_timeout_s": 100, "watchdog_startup_timeout_s": 50}, "watchdog_startup_timeout_s"),
    ({"collective_timeout_s": 0}, "collective_timeout_s"),
    ({"signal_check_interval": 0}, "signal_check_interval"),
    ({"ledger_step_interval": 0}, "ledger_step_interval"),
    ({"max_restarts": -1}, "max_restarts"),
    ({"hang_exit_code": 0}, "hang_exit_code"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ResilienceConfig(**kwargs)


def test_slots_and_kw_only():
    with pytest.raises(TypeError):
        ResilienceConfig(10.0)  # positional
    with pytest.raises(AttributeError):
        ResilienceConfig().no_such_field = 1
