import pytest

from olmo_train.resilience.requeue import decide


def ev(event, attempt, **fields):
    return {"time": 0.0, "event": event, "attempt": attempt, **fields}


@pytest.mark.parametrize("events, code, signalled, action, outcome", [
    ([ev("attempt_end", "1.0", reason="finished")], 1, False, "finish", "finished"),   # torchrun's 1
    ([], 0, False, "finish", "finished"),
    ([ev("attempt_end", "1.0", reason="preempted")], 1, True, "requeue", "preempted"),
    ([], 143, True, "requeue", "preempted"),                                             # killed on the signal
    ([ev("attempt_end", "1.0", reason="hang")], 1, False, "requeue", "failure"),
    ([], 137, False, "requeue", "failure"),                                              # SIGKILL, no end event
    ([ev("attempt_end", "0.9", reason="finished")], 1, False, "requeue", "failure"),     # another attempt's end
], ids=["finished", "exit0", "preempted", "signalled-no-end", "hang", "sigkill", "other-attempt"])
def test_decisions(events, code, signalled, action, outcome):
    d = decide(events, "1.0", code, max_restarts=3, signalled=signalled)
    assert (d.action, d.outcome) == (action, outcome)


def test_failures_counted_across_attempts_preemptions_free():
    history = [ev("job_end", "1.0", outcome="failure"), ev("job_end", "1.1", outcome="preempted"),
               ev("job_end", "1.2", outcome="failure")]
    d = decide(history, "1.3", 1, max_restarts=3)
    assert (d.action, d.failures) == ("requeue", 3)
    d = decide(history + [ev("job_end", "1.3", outcome="failure")], "1.4", 1, max_restarts=3)
    assert (d.action, d.failures) == ("stop", 4) and "max_restarts=3" in d.reason
    assert decide(history, "1.3", 1, max_restarts=0).action == "stop"
