"""Per-tenant quotas, checked and counted in the very transaction that inserts what they limit.

Each domain registers a meter for each thing it limits (`register_meter`): the kind it counts, how much of it one
record uses, and a tenant's default limit. `guard(tenant, need)` returns a check for `Store.create_all` that
first writes the tenant's own record (a no-op UPDATE), then reads the limits and the usage, and refuses (409) a
request that would pass any limit, naming it. The write is the lock: on PostgreSQL it row-locks the tenant record
until commit, so two creates of one tenant check-and-insert one after the other (READ COMMITTED: each statement
after the lock sees what the other committed), while other tenants do not wait; on SQLite it takes the database's
single write lock before anything is read. So parallel creates never overshoot, whichever process or database.

The admin tenant has no limits: it is the operator, and its creates need no lock.
"""

from __future__ import annotations

__all__ = ["Meter", "TenantQuota", "register_meter", "meters", "limits", "guard", "report"]

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import sqlalchemy as sa
from pydantic import Field

from cloudlet.core.context import ADMIN_TENANT
from cloudlet.core.errors import Conflict
from cloudlet.core.kinds import TENANT
from cloudlet.core.models import Spec
from cloudlet.core.records import Resource
from cloudlet.core.store import Guard, Store
from cloudlet.core.tables import resources

_SELECT = sa.select(*[resources.c[f.name] for f in dataclasses.fields(Resource)])


@dataclasses.dataclass(frozen=True)
class Meter:
    name: str  # the quota's name: "memory_mib"
    kind: str  # the records it counts
    use: Callable[[Resource], float]  # how much one record holds (0 once it holds nothing any more)
    default: int  # a tenant's limit until the admin sets another


class TenantQuota(Spec):
    """The part of a Tenant's spec that is its quota: limits the admin set, by meter name (the rest are defaults)."""

    quota: dict[str, int] = Field(default_factory=dict)


_METERS: dict[str, Meter] = {}


def register_meter(meter: Meter) -> Meter:
    _METERS[meter.name] = meter
    return meter


def meters() -> list[Meter]:
    return list(_METERS.values())


def limits(tenant_record: Resource | None) -> dict[str, int]:
    """Every meter's limit for a tenant: what the admin set, else the default."""
    chosen = TenantQuota.of(tenant_record).quota if tenant_record else {}
    return {m.name: chosen.get(m.name, m.default) for m in _METERS.values()}


def _usage(records: Iterable[Resource], names: Iterable[str]) -> dict[str, float]:
    wanted = [_METERS[n] for n in names]
    used = {m.name: 0.0 for m in wanted}
    for res in records:
        for m in wanted:
            if m.kind == res.kind:
                used[m.name] += m.use(res)
    return used


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else round(x, 3)


def _check(limit: Mapping[str, int], used: Mapping[str, float], need: Mapping[str, float]) -> None:
    over = [
        f"{name} would be {_num(used[name] + extra)}, the limit is {limit[name]}"
        for name, extra in need.items()
        if extra and round(used[name] + extra, 6) > limit[name]  # 0.7 + 0.3 vCPUs fit a limit of 1
    ]
    if over:
        raise Conflict(f"quota exceeded: {'; '.join(over)}; delete something or ask the admin for a larger quota")


def guard(tenant: str, need: Mapping[str, float]) -> Guard | None:
    """The check `Store.create_all` runs in its transaction before inserting what needs `need` (by meter name);
    None for the admin, which has no limits."""
    if tenant == ADMIN_TENANT:
        return None

    def check(conn: sa.Connection) -> None:
        mine = (resources.c.kind == TENANT, resources.c.tenant == tenant, resources.c.name == tenant)
        conn.execute(resources.update().where(*mine).values(updated_at=resources.c.updated_at))  # the lock
        row = conn.execute(_SELECT.where(*mine)).first()
        kinds = {_METERS[n].kind for n, extra in need.items() if extra}
        rows = conn.execute(_SELECT.where(resources.c.tenant == tenant, resources.c.kind.in_(kinds)))
        _check(limits(Resource(*row) if row else None), _usage((Resource(*r) for r in rows), need), need)

    return check


def report(store: Store, tenant: str) -> dict[str, dict[str, int | float | None]]:
    """Per meter: what the tenant uses and its limit (None: unlimited, the admin)."""
    found = store.list(TENANT, tenant=tenant, name=tenant)
    limit: Mapping[str, int | None] = (
        dict.fromkeys(_METERS) if tenant == ADMIN_TENANT else limits(found[0] if found else None)
    )
    records = [r for kind in {m.kind for m in _METERS.values()} for r in store.list(kind, tenant=tenant)]
    used = _usage(records, _METERS)
    return {name: {"used": _num(used[name]), "limit": limit[name]} for name in _METERS}
