"""The peak-EWMA weight controller (lb/weights.py): pure, on made-up samples and times."""

from __future__ import annotations

from cloudlet.lb.weights import MAX_WEIGHT, MIN_WEIGHT, PeakEwma, Sample, WeightController

FAST = Sample(latency_ms=2.0, requests=10)


def test_peak_replaces_at_once_and_decays_slowly() -> None:
    e = PeakEwma(decay=1.0)
    assert e.observe(2.0, 0.0) == 2.0
    assert e.observe(400.0, 0.1) == 400.0  # a peak is taken whole
    after = e.observe(2.0, 0.2)
    assert 300 < after < 400  # 0.1 s later it has hardly moved
    for t in range(3, 60):
        after = e.observe(2.0, t * 0.1)
    assert after < 5  # ~6 time constants later it is back


def test_slow_member_gets_low_weight_others_full() -> None:
    c = WeightController()
    samples = {f"m{i}": FAST for i in range(10)}
    assert set(c.update(0.0, samples).values()) == {MAX_WEIGHT}
    samples["slow"] = Sample(latency_ms=400.0, in_flight=5, requests=0, errors=3)
    w = c.update(0.2, samples)
    assert w["slow"] == MIN_WEIGHT
    assert all(w[f"m{i}"] == MAX_WEIGHT for i in range(10))


def test_in_flight_alone_lowers_weight_before_any_answer() -> None:
    c = WeightController()
    samples = {"a": FAST, "b": FAST}
    c.update(0.0, samples)
    w = c.update(0.2, {"a": FAST, "b": Sample(latency_ms=2.0, in_flight=4)})
    assert w["a"] == MAX_WEIGHT and w["b"] < MAX_WEIGHT // 4


def test_recovered_member_wins_traffic_back() -> None:
    c = WeightController()
    c.update(0.0, {"a": FAST, "b": Sample(latency_ms=400.0, errors=5, requests=5)})
    t, w = 0.0, {}
    for _ in range(100):  # 20 s of healthy samples
        t += 0.2
        w = c.update(t, {"a": FAST, "b": FAST})
    assert w["b"] == MAX_WEIGHT


def test_all_slow_means_equal_weights_not_drained() -> None:
    c = WeightController()
    c.update(0.0, {"a": FAST, "b": FAST, "c": FAST})
    c.slow_ms = 500.0
    slow = {"a": Sample(latency_ms=600.0), "b": Sample(latency_ms=900.0), "c": Sample(latency_ms=3000.0)}
    w = c.update(0.2, slow)
    assert set(w.values()) == {MAX_WEIGHT}


def test_drained_member_is_zero_and_gone_member_dropped() -> None:
    c = WeightController()
    c.update(0.0, {"a": FAST, "b": FAST})
    w = c.update(0.2, {"a": FAST, "b": FAST}, drained=frozenset({"b"}))
    assert w == {"a": MAX_WEIGHT, "b": 0}
    assert set(c.update(0.4, {"a": FAST})) == {"a"}


def test_jitter_of_fast_members_is_no_slowness() -> None:
    c = WeightController()
    c.update(0.0, {"a": FAST, "b": FAST})
    w = c.update(0.2, {"a": Sample(latency_ms=40.0), "b": Sample(latency_ms=400.0, errors=2, requests=2)})
    assert w["a"] == MAX_WEIGHT and w["b"] == MIN_WEIGHT
