"""Backup retention: keep last N, newest per day for D days, newest per week for W weeks."""

from __future__ import annotations

from cloudlet.core.records import Resource
from cloudlet.storage.policies import DAY, WEEK, retained


def _backups(times: list[float]) -> list[Resource]:
    return [Resource(kind="Backup", tenant="t", name=f"b{i}", spec={}, created_at=t) for i, t in enumerate(times)]


def test_keep_last_only() -> None:
    bs = _backups([100.0 * i for i in range(10)])
    assert retained(bs, 3, 0, 0) == {b.id for b in bs[-3:]}


def test_daily_and_weekly_buckets_keep_the_newest_of_each() -> None:
    start = 150 * WEEK  # a week boundary, so days 14-20 are one week and 7-13 the one before
    times = [start + d * DAY + h * 3600 for d in range(21) for h in (1, 13)]  # two backups a day, three weeks
    bs = _backups(times)
    kept = {b.created_at for b in bs if b.id in retained(bs, 1, 3, 2)}
    newest = max(times)
    assert newest in kept
    assert {start + d * DAY + 13 * 3600 for d in (18, 19, 20)} <= kept  # newest of each of the last 3 days
    assert start + 13 * DAY + 13 * 3600 in kept  # the newest of the previous week
    assert len(kept) == 4  # days 20 (last, daily, weekly), 19, 18 (daily) and 13 (weekly)
