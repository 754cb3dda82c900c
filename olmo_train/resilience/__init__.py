"""Resilience: preemption signals, the hang watchdog, health checks, the goodput ledger, its report and planner.

Importing this package does not import torch (the Slurm batch script uses the ledger and the health checks).
"""

from olmo_train.resilience.config import ResilienceConfig
from olmo_train.resilience.faults import maybe_inject_fault
from olmo_train.resilience.ledger import GoodputLedger, attempt_id, read_events
from olmo_train.resilience.signals import PREEMPTED_EXIT_CODE, PreemptionHandler
from olmo_train.resilience.watchdog import HANG_EXIT_CODE, Watchdog

__all__ = ["HANG_EXIT_CODE", "PREEMPTED_EXIT_CODE", "GoodputLedger", "PreemptionHandler", "ResilienceConfig",
           "Watchdog", "attempt_id", "maybe_inject_fault", "read_events"]
