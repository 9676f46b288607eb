"""Work queue semantics: dedupe, one worker per key, re-run when dirtied, backoff on errors."""

from __future__ import annotations

from cloudlet.core.clock import VirtualClock
from cloudlet.core.reconcile import WorkQueue


def test_dedupe_and_earliest_wins() -> None:
    clock = VirtualClock()
    q = WorkQueue(clock)
    q.add(("K", "a"), after=5)
    q.add(("K", "a"), after=1)
    q.add(("K", "a"), after=3)
    assert q.pop_ready() is None
    clock.advance(1)
    assert q.pop_ready() == ("K", "a")
    assert q.pop_ready() is None


def test_key_added_while_processing_runs_again_after() -> None:
    clock = VirtualClock()
    q = WorkQueue(clock)
    q.add(("K", "a"))
    key = q.pop_ready()
    q.add(("K", "a"))
    assert q.pop_ready() is None  # never two workers on one key
    q.done(key)  # type: ignore[arg-type]
    assert q.pop_ready() == ("K", "a")


def test_backoff_grows_and_resets() -> None:
    clock = VirtualClock()
    q = WorkQueue(clock)
    delays = []
    q.add(("K", "a"))
    for _ in range(8):
        key = q.pop_ready()
        q.done(key, error=True)  # type: ignore[arg-type]
        due = q.next_due()
        assert due is not None
        delays.append(due - clock.now())
        clock.advance_to(due)
    assert delays[0] < 0.01 and delays[-1] > delays[0] * 20
    key = q.pop_ready()
    q.done(key, requeue_after=2.0)  # type: ignore[arg-type]
    assert q.next_due() == clock.now() + 2.0


def test_condition_transition_time_moves_only_on_flip() -> None:
    from cloudlet.core.conditions import set_condition

    c = set_condition(None, "Ready", False, "Pending", "", 1)
    t0 = c[0]["last_transition_time"]
    c = set_condition(c, "Ready", False, "Pending", "still", 2)
    assert c[0]["last_transition_time"] == t0 and c[0]["observed_generation"] == 2
    c = set_condition(c, "Ready", True, "Running", "", 2)
    assert c[0]["status"] is True and c[0]["last_transition_time"] >= t0 and len(c) == 1
