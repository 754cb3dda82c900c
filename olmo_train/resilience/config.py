"""Resilience settings the trainer registers in Hydra (`resilience:` group of the root config)."""

from dataclasses import dataclass
from datetime import timedelta

from olmo_train.errors import ConfigError


@dataclass(kw_only=True, slots=True)
class ResilienceConfig:
    watchdog_timeout_s: float = 600.0
    """Seconds without a step heartbeat after which the watchdog declares a hang, dumps every thread's stack and
    exits the process with code 4. Must exceed the slowest normal step. 0 turns the watchdog off."""

    watchdog_startup_timeout_s: float = 1800.0
    """Seconds allowed before the first heartbeat (imports, process group, model build, compile, checkpoint load).
    Also the default grace of `Watchdog.extend()` around checkpoint saves. Must be >= `watchdog_timeout_s`."""

    collective_timeout_s: float = 900.0
    """Timeout of every collective (passed to `init_process_group(timeout=...)`): a dead peer raises instead of
    blocking forever. Keep it above `watchdog_timeout_s` so the watchdog, which writes the ledger, fires first."""

    signal_check_interval: int = 10
    """Steps between the all-reduces in which ranks agree to stop after USR1/TERM. 1 = every step. The signal is
    acted on at most this many steps after it arrives, so keep interval * step time well under the warning time
    of `#SBATCH --signal` (pretrain.sh asks for 120 s)."""

    max_restarts: int = 5
    """Failed attempts (crash, hang) after which the Slurm script stops requeueing. Preemptions and node failures
    handled by Slurm itself do not count. 0 = never restart after a failure."""

    ledger_step_interval: int = 10
    """Steps covered by one `step` event in RUN/goodput/events.jsonl. The first step of every attempt is written
    at once (recovery time ends there), and pending steps are flushed before every other event. 1 = every step."""

    hang_exit_code: int = 4
    """Process exit code after a watchdog hang; pretrain.sh treats it as a failed attempt."""

    def __post_init__(self) -> None:
        if self.watchdog_timeout_s < 0:
            raise ConfigError(f"resilience.watchdog_timeout_s={self.watchdog_timeout_s}: must be >= 0 (0 = off)")
        if self.watchdog_timeout_s and self.watchdog_startup_timeout_s < self.watchdog_timeout_s:
            raise ConfigError(
                f"resilience.watchdog_startup_timeout_s={self.watchdog_startup_timeout_s} is below "
                f"watchdog_timeout_s={self.watchdog_timeout_s}: start-up (compile, checkpoint load) needs the "
                "longer limit; raise it")
        if self.collective_timeout_s <= 0:
            raise ConfigError(f"resilience.collective_timeout_s={self.collective_timeout_s}: must be > 0 seconds")
        for name in ("signal_check_interval", "ledger_step_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"resilience.{name}={getattr(self, name)}: must be >= 1 step")
        if self.max_restarts < 0:
            raise ConfigError(f"resilience.max_restarts={self.max_restarts}: must be >= 0")
        if not 1 <= self.hang_exit_code <= 255:
            raise ConfigError(f"resilience.hang_exit_code={self.hang_exit_code}: must be in 1..255")

    @property
    def collective_timeout(self) -> timedelta:
        """The `timeout=` argument for `torch.distributed.init_process_group`."""
        return timedelta(seconds=self.collective_timeout_s)
