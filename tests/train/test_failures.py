"""Failure paths of one attempt: an exception in a step ends it with code 1 and a 'failed' end event; the next
attempt resumes from the last checkpoint."""

import json

import pytest

from tests.train import launch

pytestmark = pytest.mark.slow


def test_a_raised_fault_fails_the_attempt_and_the_next_one_resumes(tmp_path):
    out = launch.run(tmp_path, 0, "trainer.max_steps=6", expect=1, OLMO_TRAIN_FAULT="raise@step5")
    assert "InjectedFault" in out
    launch.run(tmp_path, 0, "trainer.max_steps=6", OLMO_TRAIN_FAULT="raise@step5")  # fires once per run
    events = [json.loads(line) for line in (tmp_path / "goodput/events.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in events if e["event"] == "attempt_end"] == ["failed", "finished"]
    assert [e["step"] for e in events if e["event"] == "checkpoint_loaded"] == [3]
    assert sorted(launch.losses(tmp_path)) == list(range(1, 7))


def test_a_hang_is_ended_by_the_watchdog_with_code_4(tmp_path):
    # checkpoints at even steps: the last heartbeat (step 3) comes with no save, so no extended deadline
    out = launch.run(tmp_path, 0, "trainer.max_steps=6", "checkpoint.interval=2", "resilience.watchdog_timeout_s=10",
                     "resilience.watchdog_startup_timeout_s=120", expect=4, OLMO_TRAIN_FAULT="hang@step4")
    events = [json.loads(line) for line in (tmp_path / "goodput/events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events[-2:]] == ["hang", "attempt_end"], out[-2000:]
    assert events[-1]["reason"] == "hang" and events[-2]["step"] == 3  # the last step that finished


@pytest.mark.parametrize("override,message", [("trainer.max_step=3", "max_step"), ("+trainer.foo=1", "foo"),
                                              ("trainer.global_batch_tokens=96", "global_batch_tokens")],
                         ids=["misspelt", "new-key", "batch"])
def test_bad_config_exits_1_naming_the_key(override, message, tmp_path):
    out = launch.run(tmp_path, 0, override, expect=1)
    assert message in out and "Traceback" not in out.split("olmo-train")[-1]
