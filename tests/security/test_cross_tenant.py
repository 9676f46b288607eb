"""An attacker with an ordinary tenant token against a real cloud: tenant B tries every verb on everything tenant A
(and the admin) owns, by name and by id, and must learn nothing and change nothing.

Tenant A makes one of every kind it can: a network, a running instance with a volume attached, a spare volume,
a volume snapshot, an instance snapshot, a clone, an imported image and, where a backup endpoint can be set up,
a backup target, a backup and a policy. The admin makes a network and a volume of its own. Then tenant B:

- calls every route of the running cloud's OpenAPI schema that takes a {name} (or {kinds} and {name}), with
  each victim's name and with its id, with a body that gets past validation (so the probe reaches the lookup);
- refers to the victims' things in the bodies of its own requests (launch on A's network or from A's snapshot,
  clone A's snapshot, snapshot or back up A's volume and instance, attach its volume to A's instance, back up to
  A's target, a policy naming A's volumes or selecting A's labels);
- reads every list and report route of the schema (lists, events, usage, info): none may mention a victim;
- calls the agent's own API port with its token.

Each probe must fail, and fail exactly as it does for a name or id that never existed (same status, same message
with the name swapped): an answer that differs tells the attacker the thing exists. At the end every record that
is not B's is unchanged (spec, labels, generation, deletion, finalizers; an instance's pid and restarts) and no
event was added to it. The statuses each probe got are printed (run with -s to see the matrix).
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

import cloudlet.domains  # noqa: F401  registers every kind
from cloudlet.core.kinds import kinds
from cloudlet.core.records import Resource, new_id
from cloudlet.core.store import Store
from cloudlet.network.secgroups import rule_id
from cloudlet.resilience.drill_resource import DRILL, DrillSpec
from tests.conftest import CloudCLI, running_cloud
from tests.s3 import s3_server

pytestmark = pytest.mark.root

A, B = "acme", "bravo"
# Every victim name starts with one of these; a ghost name swaps its first two letters for "zz" (same length).
VICTIM_PREFIXES = ("acme-", "root-")
MATRIX: list[tuple[str, str, str, str, int]] = []  # (route, kind, by, body, status) of each probe, for the report


def ghost(name: str) -> str:
    return "zz" + name[2:]


@dataclass
class Victim:
    plural: str
    name: str
    id: str


@dataclass
class World:
    cli: CloudCLI
    url: str
    agent_url: str
    admin: httpx.Client
    a: httpx.Client
    b: httpx.Client
    schema: dict[str, Any]
    victims: list[Victim] = field(default_factory=list)
    public: list[Victim] = field(default_factory=list)  # readable by every tenant, changeable by none
    no_backups: str = ""  # why backups are not in the suite, if they are not
    before: dict[str, Any] = field(default_factory=dict)

    def ids(self) -> set[str]:
        return {v.id for v in self.victims}

    def names(self) -> set[str]:
        return {v.name for v in self.victims}


def _rootfs_tar() -> bytes:
    """The smallest thing the import takes for a root filesystem: /bin/sh."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for d in ("bin", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        data = b"#!/bin/sh\n"
        info = tarfile.TarInfo("bin/sh")
        info.size, info.mode = len(data), 0o755
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code < 300, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    body: dict[str, Any] = r.json()
    return body


def _wait(api: httpx.Client, path: str, states: tuple[str, ...], timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = _ok(api.get(path))
        if view.get("state") in states:
            return view
        assert view.get("state") != "failed", f"{path} failed: {view}"
        time.sleep(0.2)
    raise AssertionError(f"{path} never reached {states}: {view}")


def _post_retry(api: httpx.Client, path: str, body: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """POST, retrying while the API answers 409 because something it needs is not ready yet."""
    deadline = time.monotonic() + timeout
    while (r := api.post(path, json=body)).status_code == 409 and time.monotonic() < deadline:
        time.sleep(0.3)
    return _ok(r)


def _fingerprint(cli: CloudCLI) -> dict[str, Any]:
    """Every record and event that is not tenant B's, as far as B could have changed it."""
    db = sqlite3.connect(f"file:{cli.home / 'state.db'}?mode=ro", uri=True, timeout=30)
    try:
        records = {}
        for row in db.execute(
            "SELECT id, kind, tenant, name, spec, labels, generation, deleted_at, finalizers, owner, status"
            " FROM resources WHERE tenant != ? ORDER BY id",
            (B,),
        ):
            rid, kind, tenant, name, spec, labels, generation, deleted_at, finalizers, owner, status = row
            st = json.loads(status)
            records[rid] = {
                "kind": kind,
                "tenant": tenant,
                "name": name,
                "spec": json.loads(spec),
                "labels": json.loads(labels),
                "generation": generation,
                "deleted_at": deleted_at,
                "finalizers": json.loads(finalizers),
                "owner": owner,
                # an instance B stopped, restarted or killed would show it here
                **({"pid": st.get("pid"), "restarts": st.get("restarts")} if kind == "Instance" else {}),
            }
        events = Counter(
            (tenant, name, reason)
            for tenant, name, reason in db.execute("SELECT tenant, name, reason FROM events WHERE tenant != ?", (B,))
            if tenant != "system"  # hosts: heartbeats and the agent's own life, not B's doing
        )
    finally:
        db.close()
    return {"records": records, "events": dict(events)}


def _backups(world: World, s3: str) -> None:
    """A's backup target, backup and policy; B's own target (used as the target of B's probes)."""
    target = {"endpoint": s3, "bucket": "sec-backups", "access_key": "test", "secret_key": "test"}
    r = world.a.post("/v1/backup-targets", json={"name": "acme-s3", **target})
    if r.status_code >= 400 and "post" in world.schema["paths"].get("/v1/backup-endpoints", {}):
        # issue 8: tenants use only endpoints the admin allowed; loopback ones only if the admin says "private"
        _ok(world.admin.post("/v1/backup-endpoints", json={"url": s3, "private": True, "name": "root-s3"}))
        r = world.a.post("/v1/backup-targets", json={"name": "acme-s3", **target})
    if r.status_code >= 400:
        # issue 8: tenants may use only endpoints the admin allowed, and never loopback ones
        world.no_backups = (
            f"a tenant cannot add a backup target at the local S3 server {s3} ({r.status_code}: {r.text}); "
            "backups, targets and policies are left out of the cross-tenant probes"
        )
        return
    _ok(world.b.post("/v1/backup-targets", json={"name": "bravo-s3", **target, "bucket": "sec-bravo"}))
    _post_retry(world.a, "/v1/backups", {"source": "acme-snap", "target": "acme-s3", "name": "acme-bk"})
    _wait(world.a, "/v1/backups/acme-bk", ("ready",), timeout=120)
    _ok(
        world.a.post(
            "/v1/backup-policies",
            # a cron that comes once a year: it never runs during the test, so A's records stay still
            json={"name": "acme-pol", "schedule": "0 3 1 1 *", "volumes": ["acme-vol"], "target": "acme-s3"},
        )
    )


def _make_victims(world: World, s3: str) -> None:
    a, admin, b = world.a, world.admin, world.b
    lab = {"owner": "acme"}
    _ok(a.post("/v1/networks", json={"name": "acme-net", "labels": lab}))
    _ok(a.post("/v1/instances", json={"name": "acme-web", "image": "busybox", "network": "acme-net", "labels": lab}))
    _ok(a.post("/v1/volumes", json={"name": "acme-vol", "size_gib": 1, "labels": lab}))
    _ok(a.post("/v1/volumes", json={"name": "acme-spare", "size_gib": 1, "labels": lab}))
    if "/v1/secgroups" in world.schema["paths"]:
        rule = {"protocol": "tcp", "ports": "80", "cidr": "0.0.0.0/0"}
        _ok(a.post("/v1/secgroups", json={"name": "acme-sg", "labels": lab, "rules": [rule]}))
    if "/v1/stacks" in world.schema["paths"]:
        _ok(a.post("/v1/stacks", json={"yaml": "name: acme-stack\nlayers:\n  acme-app: {count: 1, memory: 32}\n"}))
    _ok(admin.post("/v1/networks", json={"name": "root-net"}))
    _ok(admin.post("/v1/volumes", json={"name": "root-vol", "size_gib": 1}))
    # B's own things, to aim A's at
    _ok(b.post("/v1/instances", json={"name": "bravo-web", "image": "busybox"}))
    _ok(b.post("/v1/volumes", json={"name": "bravo-vol", "size_gib": 1}))
    _wait(a, "/v1/instances/acme-web", ("running",))
    if "/v1/stacks" in world.schema["paths"]:
        _wait(a, "/v1/stacks/acme-stack", ("ready",))
    if "/v1/drills/{name}" in world.schema["paths"]:
        # a real drill needs live hosts in a second zone (tests/integration/test_dr.py runs them); what B must not
        # reach is A's record of one: written as a finished drill, which cloudletd leaves as it is
        spec = DrillSpec(stack="acme-stack", to_zone="zone-b").dump()
        store = Store(f"sqlite:///{world.cli.home / 'state.db'}")
        try:
            store.create(Resource(kind=DRILL, tenant=A, name="acme-drill", spec=spec, phase="failed", labels=lab))
        finally:
            store.close()
    _wait(b, "/v1/instances/bravo-web", ("running",))
    if "/v1/loadbalancers" in world.schema["paths"]:
        lb = {"name": "acme-lb", "network": "acme-net", "members": ["acme-web"], "labels": lab}
        _ok(a.post("/v1/loadbalancers", json=lb))
    if "/v1/eips" in world.schema["paths"]:
        _ok(a.post("/v1/eips", json={"name": "acme-eip", "labels": lab}))
        _ok(a.post("/v1/eips/acme-eip/association", json={"target": "acme-web"}))
        _ok(b.post("/v1/eips", json={"name": "bravo-eip"}))
    for api, path in ((a, "/v1/volumes/acme-vol"), (a, "/v1/volumes/acme-spare"), (b, "/v1/volumes/bravo-vol")):
        _wait(api, path, ("ready",))
    _wait(admin, "/v1/volumes/root-vol", ("ready",))
    _ok(a.post("/v1/volumes/acme-vol/attach", json={"instance": "acme-web", "path": "/data"}))
    deadline = time.monotonic() + 30
    while not _ok(a.get("/v1/volumes/acme-vol"))["attached"] and time.monotonic() < deadline:
        time.sleep(0.2)
    _post_retry(a, "/v1/snapshots", {"source": "acme-vol", "name": "acme-snap", "labels": lab})
    _post_retry(a, "/v1/snapshots", {"source": "acme-web", "name": "acme-isnap", "labels": lab})
    for snap in ("acme-snap", "acme-isnap"):
        _wait(a, f"/v1/snapshots/{snap}", ("ready",))
    _ok(a.post("/v1/volumes/clone", json={"snapshot": "acme-snap", "name": "acme-clone", "labels": lab}))
    _wait(a, "/v1/volumes/acme-clone", ("ready",))
    r = a.put("/v1/images/acme-img/rootfs", content=_rootfs_tar(), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code < 300, f"tenant A's image import: {r.status_code} {r.text}"
    _backups(world, s3)

    db = sqlite3.connect(f"file:{world.cli.home / 'state.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = list(
            db.execute("SELECT kind, tenant, name, id FROM resources WHERE name LIKE 'acme-%' OR name LIKE 'root-%'")
        )
    finally:
        db.close()
    for kind, tenant, name, rid in rows:
        info = next(k for k in kinds() if k.name == kind)
        victim = Victim(info.plural, name, rid)
        if kind == "Image":  # a tenant's import is its own (shared kinds otherwise: hosts, the admin's endpoints)
            assert tenant == A, f"tenant A's imported image belongs to {tenant!r}"
            world.victims.append(victim)
        else:
            (world.victims if info.tenant_scoped else world.public).append(victim)
    for name, rid in db_rows(world, "SELECT name, id FROM resources WHERE kind = 'Image' AND name = 'busybox'"):
        world.public.append(Victim("images", name, rid))
    # the ids the API shows are the ones probed
    for v in world.victims:
        if v.plural in ("instances", "volumes", "snapshots", "networks", "backups") and v.name.startswith("acme-"):
            assert _ok(a.get(f"/v1/{v.plural}/{v.name}"))["id"] == v.id


def db_rows(world: World, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{world.cli.home / 'state.db'}?mode=ro", uri=True, timeout=30)
    try:
        return list(db.execute(sql))
    finally:
        db.close()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    # an image build that slipped through would go to this mirror: nothing listens there, nothing leaves the host
    with s3_server() as s3, running_cloud({"CLOUDLET_DEBIAN_MIRROR": "http://127.0.0.1:9/debian"}) as cli:
        info = cli.json("info")
        url = info["api"]
        agent_url = cli.json("host", "show", "local")["endpoint"]  # on the underlay, where its peers reach it
        tokens = {}
        for tenant in (A, B):
            tokens[tenant] = cli.run("tenant", "create", tenant).stdout.strip().splitlines()[-1]
        admin_token = (cli.home / "admin.token").read_text().strip()

        def client(token: str) -> httpx.Client:
            return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

        with client(admin_token) as admin, client(tokens[A]) as a, client(tokens[B]) as b:
            world = World(cli, url, agent_url, admin, a, b, _ok(httpx.get(f"{url}/openapi.json")))
            _make_victims(world, s3)
            world.before = _fingerprint(cli)
            yield world


# --- what a probe sends -------------------------------------------------------------------------------------------

# Bodies that pass validation, so that the probe reaches the record lookup. A route with a body that is not here
# gets one made from its schema (and the test fails if that body does not get past validation).
BODIES: dict[tuple[str, str], list[Any]] = {
    ("POST", "/v1/instances/{name}/actions"): [{"action": a} for a in ("stop", "start", "restart")],
    ("POST", "/v1/instances/{name}/exec"): [{"command": ["cat", "/etc/hostname"]}],
    ("POST", "/v1/volumes/{name}/attach"): [{"instance": "bravo-web", "path": "/mnt/stolen"}],
    ("POST", "/v1/backups/{name}/restore"): [{"name": "bravo-restored"}],
    ("PATCH", "/v1/{kinds}/{name}/labels"): [{"set": {"pwned": "yes"}, "remove": ["owner"]}],
    ("PUT", "/v1/tenants/{name}/quota"): [{"volumes": 0, "volume_gib": 0, "snapshots": 0}],
    ("POST", "/v1/hosts/{name}/heartbeat"): [{}],
    ("POST", "/v1/secgroups/{name}/rules"): [{"protocol": "tcp", "ports": "22", "cidr": "0.0.0.0/0"}],
    ("POST", "/v1/secgroups/{name}/members"): [{"instance": "bravo-web"}],
    ("POST", "/v1/eips/{name}/association"): [{"target": "bravo-web"}],
    ("POST", "/v1/stacks/{name}/flags"): [{"flags": {"pwned": "yes"}}],
    ("POST", "/v1/stacks/{name}/readonly"): [{"on": True}],
    ("POST", "/v1/stacks/{name}/deploy"): [{"layer": "acme-app"}],
}
# Path parameters besides {name} and {kinds}: B's own instance, A's group's rule (the id of tcp 80 from anywhere)
OTHER_PARAMS = {"instance": "bravo-web", "rule_id": rule_id("tcp", "80", "0.0.0.0/0", None)}
# Routes that make the caller's own record under the name in their path (images are per tenant).
CREATES_OWN = {("PUT", "/v1/images/{name}/rootfs")}
# Whose names other {name} routes take: shared kinds B may never touch (only the admin, or the agent of the host).
SHARED = {"hosts": ["local"], "tenants": [A, "admin"]}


def _deref(schema: dict[str, Any], node: Any) -> Any:
    """Follows a local $ref ("#/components/schemas/X")."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = schema
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def _example(schema: dict[str, Any], node: Any) -> Any:
    """A schema-valid value: required properties only, the first choice of every anyOf/oneOf."""
    node = _deref(schema, node)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in node and "type" not in node and "properties" not in node:
            return _example(schema, node[key][0])
    if "enum" in node:
        return node["enum"][0]
    kind = node.get("type", "object")
    if kind == "object":
        props = node.get("properties", {})
        return {k: _example(schema, props[k]) for k in node.get("required", []) if k in props}
    if kind == "array":
        return [_example(schema, node["items"])] * node.get("minItems", 0)
    if kind in ("integer", "number"):
        return node.get("minimum", 1)
    if kind == "boolean":
        return False
    return "bravo-x"


@dataclass
class Probe:
    method: str
    path: str  # concrete
    route: str  # the schema's template
    kind: str
    by: str  # "name" or "id"
    body: Any = None
    params: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None

    def send(self, api: httpx.Client, path: str | None = None, body: Any = None) -> httpx.Response:
        if self.raw is not None:
            return api.request(
                self.method, path or self.path, content=self.raw, headers={"Content-Type": "application/octet-stream"}
            )
        return api.request(
            self.method, path or self.path, json=self.body if body is None else body, params=self.params or None
        )


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", {}).get("message", r.text))
    except ValueError:
        return r.text


def _same_as_ghost(world: World, probe: Probe, r: httpx.Response, secret: str, ghost_value: str) -> str | None:
    """None if B's answer about a victim is exactly its answer about something that never existed."""
    g = probe.send(world.b, probe.path.replace(secret, ghost_value), _swap(probe.body, secret, ghost_value))
    mine, theirs = _message(r).replace(secret, ghost_value), _message(g)
    if r.status_code != g.status_code or mine != theirs:
        return (
            f"{probe.method} {probe.path} tells a victim from a ghost: {r.status_code} {_message(r)!r} "
            f"vs {g.status_code} {theirs!r}"
        )
    return None


def _swap(body: Any, old: str, new: str) -> Any:
    return None if body is None else json.loads(json.dumps(body).replace(old, new))


def route_probes(world: World) -> list[tuple[Probe, Victim]]:
    """Every operation of the live schema with a path parameter, for every victim of its kind, by name and by id."""
    out: list[tuple[Probe, Victim]] = []
    unknown = []
    for route, ops in world.schema["paths"].items():
        if "{" not in route:
            continue
        for method, op in ops.items():
            if method not in ("get", "put", "post", "patch", "delete"):
                continue
            params = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "path"}
            if "kinds" in params:
                plurals = re.findall(r"[a-z-]+", params["kinds"]["schema"]["pattern"])
            else:
                plurals = [route.split("/")[2]]
            bodies = BODIES.get((method.upper(), route))
            if bodies is None:
                content = op.get("requestBody", {}).get("content", {})
                if "application/json" in content:
                    bodies = [_example(world.schema, content["application/json"]["schema"])]
                else:
                    bodies = [None]
            queries: list[dict[str, str]] = [{}]
            if method == "delete" and any(p["name"] == "cascade" for p in op.get("parameters", [])):
                queries.append({"cascade": "true"})
            for plural in plurals:
                targets = [v for v in world.victims + world.public if v.plural == plural]
                targets += [Victim(plural, n, n) for n in SHARED.get(plural, [])]
                if not targets and plural not in SHARED:
                    unknown.append(f"{method.upper()} {route} ({plural})")
                for v in targets:
                    for by, value in (("name", v.name), ("id", v.id)):
                        if by == "id" and v.id == v.name:
                            continue
                        path = route.replace("{kinds}", plural).replace("{name}", value)
                        for param, other in OTHER_PARAMS.items():
                            path = path.replace("{" + param + "}", other)
                        if "{" in path:
                            unknown.append(f"{method.upper()} {route}: parameter {path}")
                            continue
                        for body in bodies:
                            for q in queries:
                                raw = _rootfs_tar() if route.endswith("/rootfs") else None
                                out.append((Probe(method.upper(), path, route, plural, by, body, q, raw), v))
    assert not unknown, f"routes of kinds this suite makes nothing of (add a victim and a body): {unknown}"
    return out


# --- the probes ---------------------------------------------------------------------------------------------------


def _forbidden_text(world: World) -> list[str]:
    return sorted(world.ids() | world.names() | {f'"{A}"'})


def test_no_list_or_report_mentions_a(world: World) -> None:
    """Every parameterless GET of the schema (lists, events, usage, info...) and the lists filtered by A's labels."""
    problems, secrets = [], _forbidden_text(world)
    checked = []
    for route, ops in world.schema["paths"].items():
        op = ops.get("get")
        if "{" in route or op is None:
            continue
        query = {
            p["name"]: "Instance" if p["name"] == "kinds" else "0"
            for p in op.get("parameters", [])
            if p.get("required")
        }
        variants = [query]
        if any(p["name"] == "selector" for p in op.get("parameters", [])):
            variants += [{"selector": "owner=acme"}, {"selector": "owner"}]
        if route == "/v1/events":
            variants += [{"name": v.name} for v in world.victims] + [{"name": v.id} for v in world.victims]
        for q in variants:
            r = world.b.get(route, params=q)
            checked.append(f"{route}?{q}" if q else route)
            MATRIX.append((f"GET {route}", json.dumps(q) if q else "", "list", "", r.status_code))
            if r.status_code >= 500:
                problems.append(f"GET {route} {q}: {r.status_code}")
            leaked = [s for s in secrets if s in r.text]
            if leaked:
                problems.append(f"GET {route} {q} shows {leaked}: {r.text[:500]}")
    assert "/v1/events" in checked and "/v1/storage/usage" in checked and "/v1/instances" in checked, checked
    assert not problems, "\n".join(problems)


def test_every_named_route_refuses_b_by_name_and_id(world: World) -> None:
    problems = []
    for probe, victim in route_probes(world):
        secret = victim.name if probe.by == "name" else victim.id
        r = probe.send(world.b)
        MATRIX.append(
            (f"{probe.method} {probe.route}", victim.name, probe.by, json.dumps(probe.params or ""), r.status_code)
        )
        public = victim in world.public
        shared = victim.plural in SHARED
        if public and probe.method == "GET":
            continue  # reading a public image is allowed
        if (probe.method, probe.route) in CREATES_OWN and probe.by == "name" and not public:
            # B may make its own record of that name, exactly as under a name nobody has (A's is checked at the end)
            g = probe.send(world.b, probe.path.replace(secret, ghost(secret)))
            if r.status_code != g.status_code or (
                r.status_code >= 300 and _message(r) != _message(g).replace(ghost(secret), secret)
            ):
                problems.append(
                    f"{probe.method} {probe.path}: {r.status_code} {r.text[:200]} vs ghost {g.status_code} {g.text[:200]}"
                )
            for made, name in ((r, secret), (g, ghost(secret))):
                if made.status_code < 300:
                    _ok(world.b.delete(f"/v1/{victim.plural}/{name}"))
            continue
        if r.status_code < 300:
            problems.append(f"B succeeded: {probe.method} {probe.path} {probe.body} -> {r.status_code} {r.text[:300]}")
            continue
        if r.status_code >= 500:
            problems.append(f"server error: {probe.method} {probe.path} -> {r.status_code} {r.text[:300]}")
        if public:
            continue  # no secret to keep: the image is B's to read, the test is only that B cannot change it
        if probe.by == "name" and not shared and r.status_code in (400, 422):
            problems.append(f"probe did not reach the lookup (fix its body): {probe.method} {probe.path} {r.text}")
        if not shared and (
            why := _same_as_ghost(world, probe, r, secret, ghost(secret) if probe.by == "name" else new_id())
        ):
            problems.append(why)
    assert not problems, "\n".join(problems)


def _body_probes(world: World) -> list[tuple[str, str, dict[str, Any]]]:
    """B's own requests that name A's things (by name; the id variants are made from these)."""
    probes: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/instances", {"name": "bravo-p1", "image": "busybox", "network": "acme-net"}),
        ("POST", "/v1/instances", {"name": "bravo-p2", "image": "busybox", "network": "root-net"}),
        ("POST", "/v1/instances", {"name": "bravo-p3", "from_snapshot": "acme-isnap"}),
        ("POST", "/v1/volumes/clone", {"snapshot": "acme-snap", "name": "bravo-p4"}),
        ("POST", "/v1/snapshots", {"source": "acme-vol", "name": "bravo-p5"}),
        ("POST", "/v1/snapshots", {"source": "acme-web", "name": "bravo-p6"}),
        ("POST", "/v1/snapshots", {"source": "root-vol", "name": "bravo-p7"}),
        ("POST", "/v1/volumes/bravo-vol/attach", {"instance": "acme-web", "path": "/mnt/in-a"}),
    ]
    if "/v1/secgroups" in world.schema["paths"]:
        probes += [
            ("POST", "/v1/instances", {"name": "bravo-p12", "image": "busybox", "secgroups": ["acme-sg"]}),
            ("POST", "/v1/secgroups", {"name": "bravo-sg", "rules": [{"protocol": "all", "source_group": "acme-sg"}]}),
            ("POST", "/v1/secgroups/default/rules", {"protocol": "all", "source_group": "acme-sg"}),
            ("POST", "/v1/secgroups/default/members", {"instance": "acme-web"}),
        ]
    if "/v1/eips" in world.schema["paths"]:
        probes.append(("POST", "/v1/eips/bravo-eip/association", {"target": "acme-web"}))
    if not world.no_backups:
        probes += [
            ("POST", "/v1/backups", {"source": "acme-snap", "target": "bravo-s3", "name": "bravo-p8"}),
            ("POST", "/v1/backups", {"source": "acme-vol", "target": "bravo-s3", "name": "bravo-p9"}),
            ("POST", "/v1/backups", {"source": "acme-web", "target": "bravo-s3", "name": "bravo-p10"}),
            ("POST", "/v1/backups", {"source": "bravo-vol", "target": "acme-s3", "name": "bravo-p11"}),
        ]
    return probes


def test_b_cannot_use_a_things_in_its_own_requests(world: World) -> None:
    problems = []
    ids = {v.name: v.id for v in world.victims}
    n = 0
    for method, path, body in _body_probes(world):
        secret = next(s for s in json.dumps(body).split('"') if s in ids)
        for by, value in (("name", secret), ("id", ids[secret])):
            n += 1
            sent = json.loads(json.dumps(body).replace(secret, value))
            r = world.b.request(method, path, json=sent)
            MATRIX.append((f"{method} {path}", secret, by, "body", r.status_code))
            if r.status_code < 300 or r.status_code >= 500:
                problems.append(f"{method} {path} {sent} -> {r.status_code} {r.text[:300]}")
                continue
            g_value = ghost(value) if by == "name" else new_id()
            g = world.b.request(method, path, json=json.loads(json.dumps(sent).replace(value, g_value)))
            if (r.status_code, _message(r).replace(value, g_value)) != (g.status_code, _message(g)):
                problems.append(f"{method} {path} {sent}: {r.status_code} {_message(r)!r} vs ghost {g.text}")
    assert n and not problems, "\n".join(problems)


def test_agent_port_refuses_tenant_tokens(world: World) -> None:
    """The agent's own API (cloudlet info: agent@local) answers only its control plane's key."""
    token = world.b.headers["authorization"]
    inst = next(v.id for v in world.victims if v.name == "acme-web")
    vol = next(v.id for v in world.victims if v.name == "acme-vol")
    probes = [
        ("GET", "/storage/usage", None),
        ("GET", "/storage/garbage", None),
        ("POST", "/storage/garbage", None),
        ("GET", "/repair", None),
        ("POST", "/repair", None),
        ("GET", f"/instances/{inst}/console", None),
        ("GET", f"/instances/{inst}/stats", None),
        ("POST", f"/instances/{inst}/exec", {"command": ["true"]}),
        ("GET", f"/volumes/{vol}/usage", None),
        ("PUT", "/images/import-0123456789abcdef", None),
        ("POST", "/shutdown", {"purge": True}),  # last: if this got through, the cloud would be gone
    ]
    problems = []
    with httpx.Client(base_url=world.agent_url, timeout=30) as agent:
        assert agent.get("/healthz").status_code == 200
        for auth in (token, world.admin.headers["authorization"]):
            for method, path, body in probes:
                r = agent.request(method, path, json=body, headers={"Authorization": auth})
                MATRIX.append((f"agent {method} {path.split('/')[1]}", "", "token", "", r.status_code))
                if r.status_code != 401:
                    problems.append(f"agent {method} {path} with a user token: {r.status_code} {r.text[:200]}")
    assert not problems, "\n".join(problems)


def test_b_cannot_act_on_shared_things(world: World) -> None:
    """Admin-only routes without a name, and the public busybox image: B may read it and nothing else."""
    problems = []
    probes: list[tuple[str, str, Any]] = [
        ("GET", "/v1/hosts", None),
        ("GET", "/v1/tenants", None),
        ("POST", "/v1/tenants", {"name": "bravo-two"}),
        ("GET", "/v1/repair", None),
        ("POST", "/v1/repair", None),
        ("GET", "/v1/storage/gc", None),
        ("POST", "/v1/storage/gc", None),
        ("GET", "/v1/agent/records?kinds=Instance", None),
        ("GET", "/v1/agent/watch?rev=0&kinds=Instance&timeout=0", None),
        ("POST", "/v1/agent/ops", {"ops": []}),
        ("POST", "/v1/shutdown", None),
    ]
    for method, path, body in probes:
        r = world.b.request(method, path, json=body)
        MATRIX.append((f"{method} {path.split('?')[0]}", "shared", "-", "", r.status_code))
        if r.status_code != 403:
            problems.append(f"{method} {path} as a tenant: {r.status_code} {r.text[:200]}")
    assert _ok(world.b.get("/v1/images/busybox"))["name"] == "busybox"
    assert not problems, "\n".join(problems)


def test_a_policy_of_b_never_backs_up_a_things(world: World) -> None:
    if world.no_backups:
        pytest.skip(world.no_backups)
    body = {
        "name": "bravo-pol",
        "interval_seconds": 3600,  # runs once at once, then not again during the test
        "volumes": ["acme-vol", "root-vol"],
        "instances": ["acme-web"],
        "selector": "owner=acme",
        "target": "acme-s3",
    }
    r = world.b.post("/v1/backup-policies", json=body)
    MATRIX.append(("POST /v1/backup-policies", "acme-vol,acme-web,acme-s3,owner=acme", "name", "body", r.status_code))
    if r.status_code >= 300:
        return  # refused at once: nothing can run
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pol = next(p for p in _ok(world.b.get("/v1/backup-policies"))["items"] if p["name"] == "bravo-pol")
        if pol.get("last_run"):
            break
        time.sleep(0.3)
    assert pol.get("last_run"), f"B's policy never ran: {pol}"
    assert _ok(world.b.get("/v1/backups"))["count"] == 0, "B's policy backed something up"
    backups_of_a = [b["name"] for b in _ok(world.a.get("/v1/backups"))["items"]]
    assert backups_of_a == ["acme-bk"], backups_of_a


def test_b_cannot_rebuild_a_public_image(world: World) -> None:
    """A debootstrap rebuild of busybox by a tenant (the cloud's mirror is a closed
    loopback port, so a build that slips through fails at once and nothing leaves the host)."""
    before = db_rows(world, "SELECT spec, generation FROM resources WHERE kind = 'Image' AND name = 'busybox'")
    r = world.b.post("/v1/images", json={"name": "busybox", "packages": ["curl"]})
    after = db_rows(world, "SELECT spec, generation FROM resources WHERE kind = 'Image' AND name = 'busybox'")
    assert r.status_code >= 400 and before == after, f"tenant B rebuilt busybox: {r.status_code} {r.text}"


def test_a_is_unchanged_and_still_works(world: World) -> None:
    print("\nprobe matrix (count x route, target, by, variant, status):")
    for row, count in sorted(Counter(MATRIX).items()):
        print(f"  {count:3d} x {row}")
    if world.no_backups:
        print(f"\nbackups left out: {world.no_backups}")
    after = _fingerprint(world.cli)
    changed = {
        rid: (world.before["records"].get(rid), rec)
        for rid, rec in after["records"].items()
        if world.before["records"].get(rid) != rec
    }
    gone = set(world.before["records"]) - set(after["records"])
    events = {k: v for k, v in after["events"].items() if world.before["events"].get(k) != v}
    assert not changed and not gone and not events, f"changed: {changed}\ngone: {gone}\nnew events: {events}"
    out = _ok(world.a.post("/v1/instances/acme-web/exec", json={"command": ["cat", "/etc/hostname"]}))
    assert out["exit_code"] == 0 and "acme-web" in out["stdout"], out
