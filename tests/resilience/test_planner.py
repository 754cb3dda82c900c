import math

import pytest

from olmo_train.errors import ConfigError
from olmo_train.resilience.planner import (PlanInput, active_fraction, best_interval, check_against_ledger,
                                           daly_interval, main, make_plan, max_failure_rate, simulate,
                                           young_interval)
from tests.resilience.synthetic import poisson_run

REFERENCE = PlanInput(gpus=512, failure_rate=2e-5, checkpoint_s=10.0, recovery_s=240.0)


def test_mtbf_and_young_daly():
    assert REFERENCE.mtbf_s == pytest.approx(3600 / (512 * 2e-5))
    assert young_interval(REFERENCE) == pytest.approx(math.sqrt(2 * 10 * REFERENCE.mtbf_s))
    assert daly_interval(REFERENCE) == pytest.approx(young_interval(REFERENCE), rel=0.01)


@pytest.mark.parametrize("p", [REFERENCE, PlanInput(gpus=8, failure_rate=0.01, checkpoint_s=60, recovery_s=600),
                               PlanInput(gpus=4096, failure_rate=1e-4, checkpoint_s=5, recovery_s=120)],
                         ids=["reference", "slow-checkpoint", "big-and-flaky"])
def test_best_interval_is_the_maximum_and_near_daly(p):
    best = best_interval(p)
    f = active_fraction(p, best)
    assert f >= active_fraction(p, best * 0.8) and f >= active_fraction(p, best * 1.25)
    assert best == pytest.approx(daly_interval(p), rel=0.05)


@pytest.mark.parametrize("p, interval", [(REFERENCE, 186.0), (REFERENCE, 3000.0),
                                         (PlanInput(gpus=64, failure_rate=0.02, checkpoint_s=30, recovery_s=300),
                                          400.0)], ids=["reference-250-steps", "reference-young", "flaky"])
def test_monte_carlo_agrees_with_formula(p, interval):
    sims = simulate(p, interval, work_s=200 * 3600, runs=300, seed=1)
    ci = 1.96 * sims.std(ddof=1) / math.sqrt(len(sims))
    assert abs(sims.mean() - active_fraction(p, interval)) < max(3 * ci, 1e-4)


def test_no_failures():
    p = PlanInput(gpus=8, failure_rate=0.0, checkpoint_s=10, recovery_s=60)
    assert active_fraction(p, 90) == pytest.approx(0.9)
    assert math.isinf(best_interval(p))


def test_max_failure_rate_hits_target():
    rate = max_failure_rate(512, 10.0, 240.0, 0.97)
    at = PlanInput(gpus=512, failure_rate=rate, checkpoint_s=10.0, recovery_s=240.0)
    assert active_fraction(at, best_interval(at)) == pytest.approx(0.97, abs=1e-6)
    assert max_failure_rate(512, 10.0, 600.0, 0.97) < rate  # slower recovery: fewer failures allowed


def test_planner_matches_a_poisson_ledger():
    events = poisson_run(mtbf_s=300, interval_steps=20, step_s=1.0, ckpt_s=2.0, recovery_s=30, total_steps=20000)
    check = check_against_ledger(events, gpus=2)
    assert check.inputs.checkpoint_s == pytest.approx(2.0)
    # failures during a recovery leave no trace in the ledger, so the measured MTBF is a little longer
    assert check.inputs.mtbf_s == pytest.approx(300 * 1.1, rel=0.1)
    assert abs(check.predicted - check.measured) < 0.01


def test_bad_inputs_and_cli(capsys):
    with pytest.raises(ConfigError, match="--gpus"):
        PlanInput(gpus=0, failure_rate=1e-5, checkpoint_s=1, recovery_s=1)
    assert main(["--gpus", "512", "--failure-rate", "2e-5", "--checkpoint-s", "10", "--recovery-s", "240",
                 "--runs", "20", "--step-s", "0.745", "--target", "0.97"]) == 0
    out = capsys.readouterr().out
    assert "Young interval" in out and "Monte Carlo" in out and "97% active needs at most" in out
    with pytest.raises(SystemExit):
        main(["--gpus", "8"])


def test_make_plan_fields():
    plan = make_plan(REFERENCE, 186.0, simulate_runs=20, work_h=50)
    assert plan.interval_s == 186.0 and plan.best_active_fraction > plan.active_fraction
    assert abs(plan.simulated_mean - plan.active_fraction) < 0.005
