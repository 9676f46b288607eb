"""Persistence of resource records, events, tokens and IP allocations (SQLite by default, PostgreSQL by URL).

Spec and status are written by different parties (API and reconcilers) through separate UPDATEs of disjoint
columns, so neither can overwrite the other's work.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.engine import Engine

from cloudlet.core.errors import Conflict, NotFound
from cloudlet.core.kindcache import KindCache
from cloudlet.core.records import FINALIZER, Event, Resource
from cloudlet.core.tables import changes, events, ip_allocations, resources, tokens

__all__ = ["Store", "Guard", "LabelChanges"]

_COLUMNS = [f.name for f in dataclasses.fields(Resource)]
_SELECT = sa.select(*[resources.c[c] for c in _COLUMNS])  # in dataclass order, so rows map positionally
# The hot statements are built once, their values bound at execution: SQLAlchemy then reuses each one's cache key
# and compiled form instead of building and hashing a new expression per call (most of a write's CPU time)
_BY_ID = _SELECT.where(resources.c.id == sa.bindparam("_rid"))
_INSERT = resources.insert()
# SET: the keys of the parameters; the row comes back as written, in the same statement
_UPDATED = resources.update().where(resources.c.id == sa.bindparam("_rid")).returning(*_SELECT.selected_columns)
_BUMP = _UPDATED.values(generation=resources.c.generation + 1)  # a spec write: its generation moves in the row
_EXISTING = sa.select(resources.c.id).where(resources.c.id.in_(sa.bindparam("ids", expanding=True)))
_REVISION = sa.select(sa.func.max(changes.c.rev))
_CHANGE = changes.insert()
MIGRATIONS = Path(__file__).parent / "migrations"
Guard = Callable[[sa.Connection], None]  # a check run inside a write's transaction (Store.create_all)


def _row_to_resource(row: Any) -> Resource:
    return Resource(*row)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


LabelChanges = Mapping[str, str | None]  # label key -> its new value; None removes it


class Store:
    def __init__(self, url: str) -> None:
        self._connect(url)
        # every write: (record, whether spec, deletion or placement changed) - reconcilers and their watches
        self.listeners: list[Callable[[Resource, bool], None]] = []
        self.watchers: list[Callable[[int], None]] = []  # every write, with its revision: the watch API
        self._caches: dict[str, KindCache] = {}

    def _connect(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            self.engine: Engine = sa.create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8, max_overflow=16
            )
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            sa.event.listen(self.engine, "do_connect", self._sqlite_file)
        else:
            self.engine = sa.create_engine(url, pool_size=8, max_overflow=16, pool_pre_ping=True)

    def _sqlite_file(self, dialect: Any, _record: Any, cargs: builtins.list[Any], _params: Any) -> None:
        cargs[:] = dialect.create_connect_args(sa.make_url(self.url))[0]  # the file `reopen` moved to

    def reopen(self, url: str) -> None:
        """The same store over another database, a copy of this one's: a forked simulation's own (its
        connections are the parent process's, left open for it). SQLite keeps its engine, and with it every
        statement compiled so far (a forked seed would compile each again), opening the new file from now on."""
        self.engine.dispose(close=False)
        if url.startswith("sqlite") and self.url.startswith("sqlite"):
            self.url = url
        else:
            self._connect(url)

    def migrate(self) -> None:
        cfg = AlembicConfig(str(MIGRATIONS / "alembic.ini"))
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def close(self) -> None:
        self.engine.dispose()

    def _notify(self, res: Resource, rev: int, spec_side: bool = True) -> None:
        for listener in self.listeners:
            listener(res, spec_side)
        for watcher in self.watchers:
            watcher(rev)

    @staticmethod
    def _changed(conn: sa.Connection, res: Resource, host: str | None, writer: str | None = None) -> int:
        """Records the write of res (on host) in the change log, in the writer's transaction; returns its
        revision."""
        row = {"resource_id": res.id, "kind": res.kind, "host": host, "tenant": res.tenant, "writer": writer}
        result = conn.execute(_CHANGE, row)
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    # resources
    def create(self, res: Resource, created: str | None = None, guard: Guard | None = None) -> Resource:
        """Inserts the record and, with `created`, its Created event in the same transaction, before any
        reconciler hears of it (so events read in cause-and-effect order)."""
        return self.create_all([(res, created)], guard)[0]

    def create_all(
        self, items: Sequence[tuple[Resource, str | None]], guard: Guard | None = None
    ) -> builtins.list[Resource]:
        """Inserts (record, Created message) pairs in one transaction, all or none. `guard` runs first in that
        transaction and refuses by raising: a check that must see what it counts committed, and keep it so until
        the insert (quotas, core/quota.py)."""
        revs: builtins.list[int] = []
        res = items[0][0]
        try:
            with self.engine.begin() as conn:
                if guard is not None:
                    guard(conn)
                for res, created in items:
                    conn.execute(_INSERT, dataclasses.asdict(res))
                    revs.append(self._changed(conn, res, res.host))
                    if created is not None:
                        conn.execute(_EVENT, _event(res, "Created", created, "Normal"))
        except sa.exc.IntegrityError as exc:
            raise Conflict(f"{res.kind} {res.name!r} already exists; choose another name or delete it first") from exc
        for (res, _), rev in zip(items, revs, strict=True):
            self._notify(res, rev)
        return [res for res, _ in items]

    def get(self, kind: str, tenant: str | None, name: str, parent: str = "") -> Resource:
        filters = {"kind": kind, "name": name, "parent": parent, **({} if tenant is None else {"tenant": tenant})}
        with self.engine.connect() as conn:
            row = conn.execute(_where(_shape(filters)), filters).first()
        if row is None:
            raise NotFound(f"{kind} {name!r} not found")
        return _row_to_resource(row)

    def get_by_id(self, rid: str) -> Resource | None:
        with self.engine.connect() as conn:
            row = conn.execute(_BY_ID, {"_rid": rid}).first()
        return _row_to_resource(row) if row else None

    def list(self, kind: str | None = None, tenant: str | None = None, **filters: Any) -> list[Resource]:
        """Records in id (creation) order."""
        given = {
            **({} if kind is None else {"kind": kind}),
            **({} if tenant is None else {"tenant": tenant}),
            **filters,
        }
        with self.engine.connect() as conn:
            return [_row_to_resource(r) for r in conn.execute(_where(_shape(given), ordered=True), given)]

    def versions(
        self, kind: str, tenant: str | None, limit: int | None = None, after: str | None = None
    ) -> builtins.list[tuple[str, float]]:
        """(id, updated_at) of records in id order: what a cached rendering needs to know it is still fresh."""
        q = sa.select(resources.c.id, resources.c.updated_at).where(resources.c.kind == kind)
        if tenant is not None:
            q = q.where(resources.c.tenant == tenant)
        if after is not None:
            q = q.where(resources.c.id > after)
        q = q.order_by(resources.c.id)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [(r[0], r[1]) for r in conn.execute(q)]

    def get_many(self, ids: builtins.list[str]) -> builtins.list[Resource]:
        out: builtins.list[Resource] = []
        with self.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                out += [_row_to_resource(r) for r in conn.execute(_SELECT.where(resources.c.id.in_(ids[i : i + 500])))]
        return out

    def existing(self, ids: builtins.list[str]) -> set[str]:
        """Which of ids are records (ids only: nothing decoded)."""
        with self.engine.connect() as conn:
            return {r[0] for i in range(0, len(ids), 500) for r in conn.execute(_EXISTING, {"ids": ids[i : i + 500]})}

    def sum_by_host(self, kind: str, json_key: str) -> dict[str, tuple[int, int]]:
        """Per host: (count, sum of spec[json_key]) of live records; placement's view of used capacity."""
        out: dict[str, tuple[int, int]] = {}
        q = sa.select(resources.c.host, resources.c.spec).where(resources.c.kind == kind, resources.c.host.is_not(None))
        with self.engine.connect() as conn:
            for host, spec in conn.execute(q):
                n, total = out.get(host, (0, 0))
                out[host] = (n + 1, total + int(spec.get(json_key, 0)))
        return out

    def update_spec(self, rid: str, spec: dict[str, Any], labels: LabelChanges | None = None) -> Resource:
        return self._update(rid, {"spec": spec, "updated_at": time.time()}, labels=labels, bump=True)

    def update_status(self, rid: str, *, writer: str | None = None, **values: Any) -> Resource:
        """`writer`: the host whose agent reports this status; its own watch need not hear it back."""
        values["updated_at"] = time.time()
        return self._update(rid, values, notify=False, writer=writer)

    def edit_labels(self, rid: str, changes: LabelChanges) -> Resource:
        """Labels are metadata: changing them moves no generation, but watchers and selectors see it."""
        return self._update(rid, {"updated_at": time.time()}, labels=changes)

    def place(
        self, rid: str, host: str | None, zone: str | None = None, labels: LabelChanges | None = None, **values: Any
    ) -> Resource:
        """Moves a record to host (None: back to the scheduler). The old host's watch hears it too (as a delete:
        the record left its view), so its agent lets go of what it ran."""
        old = self.get_by_id(rid)
        values.update(host=host, updated_at=time.time(), **({"zone": zone} if zone else {}))
        res = self._update(rid, values, labels=labels)
        if old is not None and old.host not in (None, host):
            with self.engine.begin() as conn:
                rev = self._changed(conn, res, old.host)
            self._notify(res, rev)
        return res

    def purge_lost(self, rid: str) -> None:
        """Purges a record whose host is gone for good, finalizers and all: nobody is left to clean up after it."""
        res = self.get_by_id(rid)
        if res is not None:
            self._purge(rid, dropping=None, lost=True)

    def mark_deleted(self, rid: str) -> Resource:
        """Deletion is a request: the record stays until every finalizer is removed (at once if it has none)."""
        res = self._update(rid, {"deleted_at": time.time(), "updated_at": time.time()})
        if not res.finalizers:
            self._purge(rid)
        return res

    def finalize(self, rid: str, finalizer: str = FINALIZER) -> bool:
        """The owner of `finalizer` has cleaned up: drop it, and purge a deleting record that has none left.
        True if the record is gone."""
        res = self.get_by_id(rid)
        if res is None:
            return True
        if res.deleting and set(res.finalizers) <= {finalizer}:
            # one transaction: dropped first and purged after, a kill in between left a deleting record with no
            # finalizer, which no reconciler looks at again
            self._purge(rid, dropping=finalizer)
            return True
        if finalizer in res.finalizers:
            res = self._update(rid, {"finalizers": [f for f in res.finalizers if f != finalizer]}, notify=False)
        return False

    def purge_finalized(self) -> int:
        """Purges deleting records with no finalizer left (a kill between mark_deleted's two writes leaves one);
        returns how many."""
        with self.engine.connect() as conn:
            rows = conn.execute(_SELECT.where(resources.c.deleted_at.is_not(None))).all()
        left = [r.id for r in map(_row_to_resource, rows) if not r.finalizers]
        for rid in left:
            self._purge(rid)
        return len(left)

    def _update(
        self,
        rid: str,
        values: dict[str, Any],
        notify: bool = True,
        writer: str | None = None,
        labels: LabelChanges | None = None,
        bump: bool = False,
    ) -> Resource:
        """labels: keys to set (None: to remove), applied to the labels as they are inside this transaction, after
        the first write holds the row: writers of different keys (a stack's lifecycle, a recovery's phase, a
        drain's mark) never put back what another took away. bump: a spec write, the generation moves."""
        with self.engine.begin() as conn:
            row = conn.execute(_BUMP if bump else _UPDATED, {**values, "_rid": rid}).first()
            if row is None:
                raise NotFound(f"resource {rid} not found")
            if labels:
                merged = {**_row_to_resource(row).labels, **labels}
                now = {k: v for k, v in merged.items() if v is not None}
                row = conn.execute(_UPDATED, {"labels": now, "_rid": rid}).one()
            res = _row_to_resource(row)
            rev = self._changed(conn, res, res.host, writer)
        self._notify(res, rev, spec_side=notify)
        return res

    def _purge(self, rid: str, dropping: str | None = None, lost: bool = False) -> None:
        """Removes the record for good; refused while any finalizer (but `dropping`, whose owner is done) is left,
        so nothing real is forgotten."""
        with self.engine.begin() as conn:
            row = conn.execute(_BY_ID, {"_rid": rid}).first()
            if row is None:
                return
            res = _row_to_resource(row)
            if not lost and [f for f in res.finalizers if f != dropping]:
                raise Conflict(f"{res.kind} {rid} still has finalizers {res.finalizers}; it cannot be purged yet")
            conn.execute(ip_allocations.delete().where(ip_allocations.c.owner_id == rid))
            conn.execute(resources.delete().where(resources.c.id == rid))
            rev = self._changed(conn, res, res.host)
        self._notify(res, rev)  # watchers of this kind learn it is gone

    # the watch API's view of the change log
    def revision(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(_REVISION).scalar() or 0)

    def changed_since(
        self,
        rev: int,
        kinds: Iterable[str],
        host: str | None = None,
        hostless: Iterable[str] = (),
        tenants: Iterable[str] | None = None,
        scoped: Iterable[str] = (),
    ) -> tuple[builtins.list[str], int]:
        """Ids of records of `kinds` written after `rev` (for a host: those written while on it, the `hostless`
        kinds, and with `tenants` the `scoped` kinds of those tenants; not its own status reports), in write order,
        each once; and the revision they bring the watcher up to."""
        with self.engine.connect() as conn:
            # the revision first, and only rows up to it: a write committed in between comes next time
            latest = int(conn.execute(_REVISION).scalar() or 0)
            params = {"rev": rev, "latest": latest, "kinds": list(kinds), "host": host, "hostless": list(hostless)}
            query = _CHANGED if host is None else _CHANGED_FOR_HOST
            if host is not None and tenants is not None:
                query = _CHANGED_FOR_SCOPE
                params.update(tenants=list(tenants), scoped=list(scoped))
            rows = list(conn.execute(query, params))
        return [r.resource_id for r in rows], max(latest, rev)

    def changed_records(self, rev: int, kind: str) -> tuple[dict[str, Resource | None], int]:
        """Records of kind written after `rev` by id (None: purged since), and the revision of the last write
        (`rev` if none): the next call resumes there. One query, over the change log's rows since `rev` only."""
        with self.engine.connect() as conn:
            rows = list(conn.execute(_CHANGED_OF_KIND, {"rev": rev, "kind": kind}))
        found = {r[0]: _row_to_resource(r[2:]) if r[2] is not None else None for r in rows}
        return found, max((r[1] for r in rows), default=rev)

    def cached(self, kind: str) -> KindCache:
        """kind's records in memory, current at each read (core/kindcache.py); one per kind and store."""
        cache = self._caches.get(kind)
        if cache is None:
            cache = self._caches[kind] = KindCache(self, kind)
        return cache

    def compact_changes(self) -> int:
        """Drops change rows superseded by a later one of the same record by the same writer; watchers only need
        the latest of each (per writer, since a host does not hear its own)."""
        latest = sa.select(sa.func.max(changes.c.rev)).group_by(changes.c.resource_id, changes.c.writer)
        with self.engine.begin() as conn:
            return int(conn.execute(changes.delete().where(changes.c.rev.not_in(latest))).rowcount)

    def compact_events(self, keep: int = 200, gone_after: float = 3600.0) -> int:
        """Bounds the event log: each record keeps its newest `keep` events, and a purged record's events go once
        the newest is `gone_after` seconds old (so `cloudlet events NAME` still tells how it ended)."""
        ranked = sa.select(
            events.c.id,
            sa.func.row_number().over(partition_by=events.c.resource_id, order_by=events.c.id.desc()).label("n"),
        ).subquery()
        old = sa.select(ranked.c.id).where(ranked.c.n > keep)
        live = sa.select(resources.c.id)
        stale = (
            sa.select(events.c.resource_id)
            .where(events.c.resource_id.not_in(live))
            .group_by(events.c.resource_id)
            .having(sa.func.max(events.c.time) < time.time() - gone_after)
        )
        with self.engine.begin() as conn:
            n = conn.execute(events.delete().where(events.c.id.in_(old))).rowcount
            return int(n + conn.execute(events.delete().where(events.c.resource_id.in_(stale))).rowcount)

    # events
    def add_event(
        self,
        res: Resource,
        reason: str,
        message: str,
        type_: str = "Normal",
        uid: str | None = None,
        at: float | None = None,
    ) -> None:
        """With `uid` (an agent's replayed events), an event already stored is kept once."""
        try:
            with self.engine.begin() as conn:
                conn.execute(_EVENT, _event(res, reason, message, type_, uid, at))
        except sa.exc.IntegrityError:
            if uid is None:
                raise

    def list_events(self, tenant: str | None = None, name: str | None = None, limit: int = 200) -> builtins.list[Event]:
        q = events.select()
        if tenant is not None:
            q = q.where(events.c.tenant == tenant)
        if name is not None:
            q = q.where(events.c.name == name)
        q = q.order_by(events.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = list(conn.execute(q))
        return [
            Event(
                **{
                    k: getattr(r, k)
                    for k in ("resource_id", "kind", "tenant", "name", "time", "type", "reason", "message")
                }
            )
            for r in reversed(rows)
        ]

    # tokens
    def add_token(self, token: str, tenant: str, role: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                tokens.insert().values(token_hash=hash_token(token), tenant=tenant, role=role, created_at=time.time())
            )

    def revoke_tokens(self, tenant: str, role: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(tokens.delete().where(tokens.c.tenant == tenant, tokens.c.role == role))

    def lookup_token(self, token: str) -> tuple[str, str] | None:
        with self.engine.connect() as conn:
            row = conn.execute(tokens.select().where(tokens.c.token_hash == hash_token(token))).first()
        return (row.tenant, row.role) if row else None

    def has_tenant(self, tenant: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(tokens.select().where(tokens.c.tenant == tenant)).first() is not None

    # IP allocations
    def allocate_ip(self, network_id: str, owner_id: str, candidates: Iterable[str]) -> str:
        """First free candidate address; the primary key makes two owners of one address impossible."""
        with self.engine.begin() as conn:
            row = conn.execute(
                ip_allocations.select().where(
                    ip_allocations.c.network_id == network_id, ip_allocations.c.owner_id == owner_id
                )
            ).first()
            if row:
                return str(row.address)
            used = {
                r.address
                for r in conn.execute(
                    sa.select(ip_allocations.c.address).where(ip_allocations.c.network_id == network_id)
                )
            }
        for addr in candidates:
            if addr in used:
                continue
            try:
                with self.engine.begin() as conn:
                    conn.execute(ip_allocations.insert().values(network_id=network_id, address=addr, owner_id=owner_id))
                return addr
            except sa.exc.IntegrityError:
                continue
        raise Conflict("network has no free addresses left; create a network with a larger --subnet")

    def release_ips(self, owner_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(ip_allocations.delete().where(ip_allocations.c.owner_id == owner_id))


_EVENT = events.insert()


def _event(
    res: Resource, reason: str, message: str, type_: str, uid: str | None = None, at: float | None = None
) -> dict[str, Any]:
    """An event row's values, for _EVENT."""
    return {
        "resource_id": res.id,
        "kind": res.kind,
        "tenant": res.tenant,
        "name": res.name,
        "time": at or time.time(),
        "type": type_,
        "reason": reason,
        "message": message,
        "uid": uid,
    }


_Shape = tuple[tuple[str, bool], ...]  # (column, whether its value is None) of an equality filter


def _shape(filters: Mapping[str, Any]) -> _Shape:
    return tuple((col, value is None) for col, value in filters.items())


@functools.lru_cache(maxsize=256)
def _where(shape: _Shape, ordered: bool = False) -> sa.Select[Any]:
    """The records whose columns equal the parameters of the same names (None: IS NULL), built once per shape."""
    q = _SELECT.where(*[resources.c[c].is_(None) if null else resources.c[c] == sa.bindparam(c) for c, null in shape])
    return q.order_by(resources.c.id) if ordered else q


def _changed_query(for_host: bool, scoped: bool = False) -> sa.Select[Any]:
    """Ids written after :rev up to :latest, of :kinds (for a host, those on :host and the :hostless kinds, with
    `scoped` also the :scoped kinds of :tenants; not its own status reports), each once with its last revision,
    in write order."""
    q = sa.select(changes.c.resource_id, sa.func.max(changes.c.rev).label("rev")).where(
        changes.c.rev > sa.bindparam("rev"),
        changes.c.rev <= sa.bindparam("latest"),
        changes.c.kind.in_(sa.bindparam("kinds", expanding=True)),
    )
    if for_host:
        seen = [changes.c.host == sa.bindparam("host"), changes.c.kind.in_(sa.bindparam("hostless", expanding=True))]
        if scoped:
            seen.append(
                sa.and_(
                    changes.c.kind.in_(sa.bindparam("scoped", expanding=True)),
                    changes.c.tenant.in_(sa.bindparam("tenants", expanding=True)),
                )
            )
        q = q.where(
            sa.or_(*seen),
            sa.or_(changes.c.writer.is_(None), changes.c.writer != sa.bindparam("host")),
        )
    return q.group_by(changes.c.resource_id).order_by("rev")


_CHANGED, _CHANGED_FOR_HOST, _CHANGED_FOR_SCOPE = (
    _changed_query(False),
    _changed_query(True),
    _changed_query(True, True),
)
_LAST_WRITES = (
    sa.select(changes.c.resource_id, sa.func.max(changes.c.rev).label("rev"))
    .where(changes.c.rev > sa.bindparam("rev"), changes.c.kind == sa.bindparam("kind"))
    .group_by(changes.c.resource_id)
    .subquery()
)
# (id, its last revision, the record's columns or NULLs when it is gone)
_CHANGED_OF_KIND = sa.select(_LAST_WRITES.c.resource_id, _LAST_WRITES.c.rev, *_SELECT.selected_columns).select_from(
    _LAST_WRITES.outerjoin(resources, resources.c.id == _LAST_WRITES.c.resource_id)
)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
