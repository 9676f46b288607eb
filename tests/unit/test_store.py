"""The store against SQLite and a real PostgreSQL started here."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cloudlet.core.errors import Conflict, NotFound
from cloudlet.core.records import FINALIZER, Resource
from cloudlet.core.store import Store
from cloudlet.core.watch import Watch


def _res(name: str, tenant: str = "t1") -> Resource:
    return Resource(kind="Instance", tenant=tenant, name=name, spec={"a": 1})


def test_create_get_and_duplicate(store: Store) -> None:
    r = store.create(_res("one"))
    got = store.get("Instance", "t1", "one")
    assert got.id == r.id and got.spec == {"a": 1} and got.generation == 1
    with pytest.raises(Conflict):
        store.create(_res("one"))
    store.create(_res("one", tenant="t2"))  # same name, other tenant
    with pytest.raises(NotFound):
        store.get("Instance", "t3", "one")


def test_spec_bumps_generation_status_does_not(store: Store) -> None:
    r = store.create(_res("gen"))
    r = store.update_spec(r.id, {"a": 2})
    assert r.generation == 2
    r = store.update_status(r.id, status={"x": 1}, phase="ready", observed_generation=2)
    assert r.generation == 2 and r.status == {"x": 1} and r.phase == "ready"
    assert store.update_spec(r.id, {"a": 3}).status == {"x": 1}  # spec writes never clobber status


def test_label_changes_apply_to_the_labels_as_they_are_now(store: Store) -> None:
    """Two writers holding the same old copy (a recovery's phase, a stack's lifecycle): each changes its own key,
    and neither puts back what the other removed (a stack once put a finished recovery's phase back, and the
    recovery ran again, rebuilding from the image what it had just booted from the replica)."""
    r = store.create(_res("lab"))
    r = store.edit_labels(r.id, {"phase": "replacing", "keep": "1"})
    stale = r
    store.edit_labels(r.id, {"phase": None})
    store.update_spec(stale.id, {"a": 2}, labels={"lifecycle": "setup"})
    got = store.place(stale.id, "h1", labels={"moved": "yes"})
    assert got.labels == {"keep": "1", "lifecycle": "setup", "moved": "yes"}, got.labels


def test_finalizer_gates_purge(store: Store) -> None:
    r = _res("ev")
    r.finalizers = [FINALIZER]
    store.create(r)
    store.add_event(r, "Created", "made")
    store.mark_deleted(r.id)
    assert store.get_by_id(r.id).deleting  # type: ignore[union-attr]
    with pytest.raises(Conflict):
        store._purge(r.id)  # nothing may forget a record whose owner has not cleaned up
    assert store.get_by_id(r.id) is not None
    assert store.finalize(r.id)
    assert store.get_by_id(r.id) is None
    assert [e.reason for e in store.list_events("t1", "ev")] == ["Created"]
    plain = store.create(_res("no-finalizer"))
    store.mark_deleted(plain.id)
    assert store.get_by_id(plain.id) is None


def test_finalize_purges_in_one_write_and_leftovers_are_swept(store: Store) -> None:
    r = _res("once")
    r.finalizers = [FINALIZER]
    store.create(r)
    store.mark_deleted(r.id)
    rev = store.revision()
    assert store.finalize(r.id) and store.get_by_id(r.id) is None
    assert store.revision() == rev + 1  # the purge alone: no write that drops the finalizer and leaves the record
    # what a kill between two writes left (the old finalize, or mark_deleted before its purge): the sweep ends it
    left, kept = _res("left"), _res("kept")
    left.finalizers = kept.finalizers = [FINALIZER]
    for res in (left, kept):
        store.create(res)
        store.mark_deleted(res.id)
    store._update(left.id, {"finalizers": []})
    assert store.purge_finalized() == 1
    assert store.get_by_id(left.id) is None and store.get_by_id(kept.id) is not None


def test_watch_resumes_without_missing_or_repeating(store: Store) -> None:
    start = store.revision()
    a, b = store.create(_res("wa")), store.create(_res("wb"))
    store.update_status(a.id, status={"x": 1})
    ids, rev = store.changed_since(start, ["Instance"], None)
    assert ids == [b.id, a.id] and rev > start  # each once, in the order of its latest write
    store.update_spec(b.id, {"a": 2})
    ids2, rev2 = store.changed_since(rev, ["Instance"], None)
    assert ids2 == [b.id] and rev2 > rev
    assert store.changed_since(rev2, ["Instance"], None) == ([], rev2)
    store.mark_deleted(b.id)
    ids3, _ = store.changed_since(rev2, ["Instance"], None)
    assert ids3 == [b.id] and store.get_by_id(b.id) is None  # a watcher sees the purge as a missing record
    assert store.compact_changes() > 0
    assert store.changed_since(start, ["Instance"], None)[0] == [a.id, b.id]


def test_a_closed_watch_answers_its_long_polls_at_once(store: Store) -> None:
    """cloudletd stopping closes the watch: an agent's 20 s long poll must not hold the exit up."""
    watch = Watch(store)
    rev = store.revision()
    answers: list[tuple[list[Any], int]] = []
    waiter = threading.Thread(
        target=lambda: answers.append(watch.wait(rev, ["Instance"], None, (), 20.0, lambda r: True))
    )
    waiter.start()
    time.sleep(0.3)
    assert not answers  # nothing changed: still waiting
    closed = time.monotonic()
    watch.close()
    waiter.join(5)
    assert answers == [([], rev)] and time.monotonic() - closed < 5
    assert watch.wait(rev, ["Instance"], None, (), 20.0, lambda r: True) == ([], rev)  # and any later one


def test_replayed_events_are_kept_once(store: Store) -> None:
    r = store.create(_res("replay"))
    for _ in range(2):
        store.add_event(r, "Restarted", "restart policy always", uid="agent-op-1")
    assert [e.reason for e in store.list_events("t1", "replay")] == ["Restarted"]


def test_ip_allocation_is_unique_and_stable(store: Store) -> None:
    cands = [f"10.240.9.{i}" for i in range(2, 5)]
    a = store.allocate_ip("net1", "i1", cands)
    b = store.allocate_ip("net1", "i2", cands)
    assert a != b and store.allocate_ip("net1", "i1", cands) == a
    store.allocate_ip("net1", "i3", cands)
    with pytest.raises(Conflict):
        store.allocate_ip("net1", "i4", cands)
    store.release_ips("i2")
    assert store.allocate_ip("net1", "i4", cands) == b


def test_tokens(store: Store) -> None:
    store.add_token("secret-1", "acme", "member")
    assert store.lookup_token("secret-1") == ("acme", "member")
    assert store.lookup_token("nope") is None


def test_migrations_dir_ships(tmp_path: Path) -> None:
    from cloudlet.core.store import MIGRATIONS

    assert (MIGRATIONS / "versions" / "0001_initial.py").exists()


def test_the_event_log_is_bounded(store: Store) -> None:
    """A record that keeps failing, or a tenant that creates and deletes in a loop, cannot grow it for ever."""
    busy = store.create(_res("busy"))
    for i in range(30):
        store.add_event(busy, "Tick", f"tick {i}")
    gone = store.create(_res("gone"))
    store.add_event(gone, "Old", "long ago", at=time.time() - 7200)
    store.mark_deleted(gone.id)
    assert store.compact_events(keep=10) >= 20 + 1
    ticks = [e.message for e in store.list_events(name="busy", limit=1000) if e.reason == "Tick"]
    assert sorted(ticks) == sorted(f"tick {i}" for i in range(20, 30)), "not the newest ten kept"
    assert store.list_events(name="gone", limit=1000) == []


def test_a_kind_cache_sees_this_process_writes_at_once_and_another_store_after_its_poll(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control plane's in-memory Host list (core/kindcache.py): current after every write of its process,
    another process's (a second Store on the same database) within POLL; purged records leave it."""
    from cloudlet.core import kindcache

    kind = "CacheProbe"
    cache = store.cached(kind)
    assert store.cached(kind) is cache and cache.list() == []
    a = store.create(Resource(kind=kind, tenant="t1", name="a", spec={}))
    b = store.create(Resource(kind=kind, tenant="t2", name="b", spec={}))
    store.create(_res("not-of-the-kind"))
    assert [r.id for r in cache.list()] == [a.id, b.id] and [r.name for r in cache.list("t2")] == ["b"]
    store.update_status(a.id, phase="up")
    assert cache.get("t1", "a").phase == "up" and cache.get("t1", "b") is None  # type: ignore[union-attr]
    assert cache.get_by_id(b.id) == b
    monkeypatch.setattr(kindcache, "POLL", 3600.0)
    other = Store(store.url)
    try:
        other.update_status(b.id, phase="down")
        other.mark_deleted(a.id)  # no finalizers: purged
        assert cache.get("t2", "b").phase != "down"  # type: ignore[union-attr]  # not looked again yet
        monkeypatch.setattr(kindcache, "POLL", 0.0)
        assert [(r.name, r.phase) for r in cache.list()] == [("b", "down")] and cache.get("t1", "a") is None
    finally:
        other.close()


def test_existing_says_which_ids_are_records(store: Store) -> None:
    r = store.create(_res("exists"))
    assert store.existing([r.id, "0" * 26]) == {r.id} and store.existing([]) == set()
