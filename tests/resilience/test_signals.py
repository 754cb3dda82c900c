import os
import signal

import pytest

from olmo_train.resilience.ledger import GoodputLedger, read_events
from olmo_train.resilience.signals import PreemptionHandler
from tests.helpers.distributed import run_distributed


@pytest.fixture
def handler():
    h = PreemptionHandler(check_interval=5).install()
    yield h
    h.uninstall()


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["usr1", "term"])
def test_signal_is_recorded_and_acted_on_at_interval(handler, sig):
    assert not handler.should_stop(5)
    os.kill(os.getpid(), sig)
    assert handler.requested and handler.signum == sig
    assert not handler.should_stop(6)  # not a check step: no decision yet
    assert handler.should_stop(10)
    assert handler.should_stop(11)  # latched


def test_signal_event_goes_to_ledger(tmp_path):
    ledger = GoodputLedger(tmp_path, attempt="a")
    h = PreemptionHandler(check_interval=1, ledger=ledger).install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert h.should_stop(3)
    finally:
        h.uninstall()
    (event,) = read_events(tmp_path)
    assert event["event"] == "signal" and event["step"] == 3 and event["signal"] == "SIGUSR1"
    assert event["received"] > 0


def test_uninstall_restores_previous_handler():
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))
    try:
        h = PreemptionHandler().install()
        h.uninstall()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert seen == [signal.SIGUSR1] and not h.requested
    finally:
        signal.signal(signal.SIGUSR1, previous)


def _agree_worker(rank, world_size, results_dir):
    h = PreemptionHandler(check_interval=2)
    answers = []
    for step in range(1, 9):
        if rank == 1 and step == 3:
            h._handle(signal.SIGUSR1, None)  # what the OS would do on rank 1 only
        answers.append(h.should_stop(step))
    with open(os.path.join(results_dir, f"{rank}.txt"), "w") as f:
        f.write(",".join(str(int(a)) for a in answers))


@pytest.mark.distributed
def test_ranks_agree_when_only_one_rank_was_signalled(tmp_path):
    run_distributed(_agree_worker, 2, str(tmp_path))
    expected = "0,0,0,1,1,1,1,1"  # signal at step 3, first check at step 4
    assert (tmp_path / "0.txt").read_text() == expected
    assert (tmp_path / "1.txt").read_text() == expected


@pytest.mark.parametrize("env, has_usr2", [
    ({}, False),
    ({"SUBMITIT_EXECUTOR": "slurm"}, True),                                     # Hydra's submitit launcher
    ({"SUBMITIT_EXECUTOR": "slurm", "OLMO_TRAIN_LAUNCHER": "submitit"}, False),  # our launcher handles USR2 itself
], ids=["plain", "hydra-submitit", "olmo-submitit"])
def test_preemption_signals_under_submitit(env, has_usr2):
    from olmo_train.resilience.signals import preemption_signals

    sigs = preemption_signals(env)
    assert signal.SIGUSR1 in sigs and signal.SIGTERM in sigs and (signal.SIGUSR2 in sigs) == has_usr2
