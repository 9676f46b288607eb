"""An attacker against a cloud of two hosts on one machine (issue 10): `local` and an added host `h2` in zone-b,
tenant networks spanning both over VXLAN, every agent seeing every tenant's instances.

Tenant A (acme) runs a-local and a-h2 on its network anet; tenant B (bravo) runs b-local, b-h2 (launched
`--net-raw`) on bnet and b-out on an egress network (the one path that routes into 198.18.0.0/15, where the underlay
is). Each test is one attack class and fails if the attack works; each also sends the same packets on an allowed
path, so a test whose probe is broken fails instead of passing:

- the underlay (cloudletd, every agent's API and /lease, the VXLAN port) is out of every instance's reach;
- a forged VXLAN datagram (a plain UDP socket is all it takes) sent from an instance to every address it can name
  lands on no network; the same datagram from a host's namespace on the underlay does (the detector works);
- the machine's own unprivileged users cannot inject one either (the root namespace's VXLAN socket);
- tenant B's instances on either host reach none of A's over TCP, UDP, ICMP or ARP; A's reach each other;
- B's gateway and metadata on h2 tell nothing of A's instances, on the host where A has one and where it has not;
- a raw-socket instance cannot pose as the gateway to its neighbours across VXLAN (ARP, frames from its MAC);
- h2's agent token writes only records of h2, and no user route;
- the host routes refuse tenants (as for a name that does not exist) and bad bodies with a 4xx saying what to fix.

Raw frames and UDP datagrams are sent by the host's python3 run in the instance's own network namespace
(`nsenter --net`): the same wire as the instance itself, which holds CAP_NET_RAW there when launched --net-raw
(busybox has no python; its `arping` shows the capability is real). Nothing here sends from the root namespace to
a tenant or outside address; the one datagram sent from the root namespace goes to the cloud's own underlay
address, which `ip route get` shows is local.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from cloudlet.network.netns import NETNS_DIR
from tests.conftest import CloudCLI, running_cloud
from tests.integration.test_secgroups import SERVE, ping_gets_in, udp_gets_in

pytestmark = pytest.mark.root

A, B = "acme", "bravo"
SECRET = "DB_PASSWORD=s3cr3t-of-a-local"

# A VXLAN datagram carrying a broadcast ARP request "who-has TPA tell SPA" from MAC 02:00:00:00:00:66; whoever it
# lands on (the owner of TPA) records SPA in its neighbour table: that entry is the proof it got through.
VXLAN_SEND = r"""
import socket, sys
vni, spa, tpa, port = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
smac = bytes.fromhex("020000000066")
arp = b"\x00\x01\x08\x00\x06\x04\x00\x01" + smac + socket.inet_aton(spa) + bytes(6) + socket.inet_aton(tpa)
pkt = b"\x08\x00\x00\x00" + vni.to_bytes(3, "big") + b"\x00" + b"\xff" * 6 + smac + b"\x08\x06" + arp
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
for dst in sys.argv[5:]:
    for _ in range(3):
        try:
            s.sendto(pkt, (dst, port))
        except OSError:
            pass  # unreachable from here: that is the point
"""

# An ARP packet (op 1 request, 2 reply) sent raw on eth0: sender MAC/IP as given, to DMAC and TPA.
ARP_SEND = r"""
import socket, sys
smac, spa, dmac, tpa, op = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
m = lambda s: bytes.fromhex(s.replace(":", ""))
tha = bytes(6) if op == 1 else m(dmac)
arp = b"\x00\x01\x08\x00\x06\x04" + op.to_bytes(2, "big") + m(smac) + socket.inet_aton(spa) + tha + socket.inet_aton(tpa)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for _ in range(3):
    s.send(m(dmac) + m(smac) + b"\x08\x06" + arp)
"""


@dataclass
class Inst:
    name: str
    tenant: str
    id: str
    ip: str
    host: str
    netns: str
    mac: str = ""


@dataclass
class World:
    admin: CloudCLI
    tenants: dict[str, CloudCLI]
    tokens: dict[str, str]
    url: str
    cid: str
    underlay: str  # 198.19.N.
    vxlan_port: int
    hosts: dict[str, dict[str, Any]]
    insts: dict[str, Inst] = field(default_factory=dict)
    gateways: dict[str, str] = field(default_factory=dict)  # network -> gateway

    def __getitem__(self, name: str) -> Inst:
        return self.insts[name]


def _ns(netns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={NETNS_DIR}/{netns}", *argv], capture_output=True, text=True, timeout=timeout
    )


def _neigh(inst: Inst, ip: str) -> str:
    """inst's neighbour entry for ip ("" when it has none)."""
    return subprocess.run(["ip", "-n", inst.netns, "neigh", "show", ip], capture_output=True, text=True).stdout


def _ping_until(inst: Inst, ip: str, timeout: float = 10) -> None:
    """Until inst pings ip (a fresh instance's security group rules may still be loading)."""
    deadline = time.monotonic() + timeout
    while _ns(inst.netns, "ping", "-c", "1", "-W", "1", ip).returncode != 0:
        assert time.monotonic() < deadline, f"{inst.name} never reached {ip}"


def _tcp_many(world: World, src: Inst, targets: list[tuple[str, int, str]]) -> list[str]:
    """What each ip:port answered src's HTTP GET of path (from inside src, busybox nc, all at once); "" where
    nothing got through."""
    jobs = " ".join(
        f"(printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {ip} {port} > /tmp/probe{i} 2>&1) &"
        for i, (ip, port, path) in enumerate(targets)
    )
    show = "; ".join(f"echo; echo '== {i}'; cat /tmp/probe{i}; rm -f /tmp/probe{i}" for i in range(len(targets)))
    out = world.tenants[src.tenant].run("exec", src.name, "--", "sh", "-c", f"{jobs} wait; {show}", check=False).stdout
    parts = re.split(r"^== (\d+)$", out, flags=re.MULTILINE)
    got = {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    assert set(got) == set(range(len(targets))), out
    return [got[i] for i in range(len(targets))]


def _tcp(world: World, src: Inst, ip: str, port: int, path: str = "/") -> str:
    return _tcp_many(world, src, [(ip, port, path)])[0]


def _vni(subnet: str) -> int:
    """The VNI network/drivers/linux.py gives a subnet: its network address over 8, from 10.240.0.0, plus one."""
    addr = int.from_bytes(socket.inet_aton(subnet.split("/")[0]), "big")
    return ((addr - int.from_bytes(socket.inet_aton("10.240.0.0"), "big")) >> 3) + 1


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with running_cloud(hosts=[("h2", "zone-b")]) as admin:
        # everything below is the admin's doing; the tests act as tenant B, as h2's agent and as a machine user
        tokens = {t: admin.run("tenant", "create", t).stdout.strip().splitlines()[-1] for t in (A, B)}
        tenants = {t: CloudCLI(admin.home, {"CLOUDLET_TOKEN": tok}) for t, tok in tokens.items()}
        tenants[A].run("network", "create", "anet")
        tenants[B].run("network", "create", "bnet")
        tenants[B].run("network", "create", "bout", "--egress")
        user_data = admin.home / "a-local.user-data"  # a secret only a-local (and its host) should ever hold
        user_data.write_text(f"#!/bin/sh\n# {SECRET}\n")
        plan = [
            (A, "a-local", "zone-a", "anet", ("--user-data", str(user_data))),
            (A, "a-h2", "zone-b", "anet", ()),
            (B, "b-local", "zone-a", "bnet", ()),
            (B, "b-h2", "zone-b", "bnet", ("--net-raw",)),
            (B, "b-out", "zone-a", "bout", ()),
        ]
        for tenant, name, zone, net, extra in plan:
            tenants[tenant].run(
                "launch",
                "busybox",
                name,
                "--zone",
                zone,
                "--network",
                net,
                "--memory",
                "32",
                *extra,
                "--command",
                SERVE,
            )
        cid = admin.cloud_id()
        endpoint = json.loads((admin.home / "endpoint.json").read_text())
        hosts = {h["name"]: h for h in admin.json("host", "list")}
        underlay = endpoint["underlay_url"].split("//")[1].rsplit(".", 1)[0] + "."
        world = World(
            admin, tenants, tokens, endpoint["url"], cid, underlay, 20000 + int(underlay.split(".")[2]), hosts
        )
        for tenant, name, *_ in plan:
            view = tenants[tenant].wait_state(name, "running", timeout=60)
            ns = f"cl-{cid}-i-{view['id']}" if view["host"] == "local" else f"cl-{cid}-h-h2.i-{view['id']}"
            link = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "eth0"], capture_output=True, text=True)
            mac = json.loads(link.stdout)[0]["address"]
            world.insts[name] = Inst(name, tenant, view["id"], view["ip"], view["host"], ns, mac)
        for tenant, cli in tenants.items():
            for net in cli.json("network", "list"):
                world.gateways[net["name"]] = net["gateway"]
        yield world


def test_instances_cannot_reach_the_underlay(world: World) -> None:
    """cloudletd's API and every agent's API (/lease, /replicas), from instances on both hosts, the one on an egress
    network included; a peer host on the underlay reaches them (the probe works)."""
    api_port = int(world.url.rsplit(":", 1)[1])
    targets = [(f"{world.underlay}129", api_port, "/v1/hosts")]
    for h in world.hosts.values():
        ip, port = h["endpoint"].split("//")[1].rsplit(":", 1)
        targets += [(ip, int(port), "/lease"), (ip, int(port), f"/replicas/disks/{world['a-local'].id}")]
    # control: h2's machine (a peer on the underlay) gets local's agent's answer
    lease = world.hosts["local"]["endpoint"] + "/lease"
    code = f"import urllib.request;print(urllib.request.urlopen({lease!r}, timeout=5).read().decode())"
    out = _ns(f"cl-{world.cid}-h-h2", "python3", "-c", code).stdout
    assert '"host":"local"' in out.replace(" ", ""), out
    for src in ("b-local", "b-h2", "b-out", "a-h2"):
        # controls in the same batch: its gateway's metadata answers, and a neighbour where it has one (b-out: none)
        batch = [*targets, ("169.254.169.254", 80, "/latest/meta-data/")]
        near = {"b-local": "b-h2", "b-h2": "b-local", "a-h2": "a-local"}.get(src)
        if near:
            batch.append((world[near].ip, 8080, "/"))
        for _ in range(10):  # controls may miss an nc -w 1 on a busy machine; the attack must fail every round
            answers = _tcp_many(world, world[src], batch)
            for (ip, port, path), answer in zip(targets, answers, strict=False):
                assert "HTTP/" not in answer, f"{src} reached {ip}:{port}{path}: {answer[:200]}"
            if "HTTP/" in answers[len(targets)] and (near is None or f"hi-{near}" in answers[-1]):
                break
            time.sleep(1)  # a metadata server busy with the last round's connections answers the next
        else:
            raise AssertionError(f"the controls never answered {src}: {answers[len(targets) :]}")


def test_forged_vxlan_from_an_instance_lands_nowhere(world: World) -> None:
    """B's instances on both hosts send A's VNI (anet) a frame for a-local to every address they can name: the
    underlay's, the group, gateways, broadcast. a-local never sees it; from h2's namespace it does."""
    a_local = world["a-local"]
    vni = _vni(next(n for n in world.tenants[A].json("network", "list") if n["name"] == "anet")["subnet"])
    u = world.underlay
    dsts = [f"{u}129", f"{u}130", f"{u}255", f"239.192.{u.split('.')[2]}.1", "255.255.255.255"]
    dsts += [world.gateways[n] for n in ("anet", "bnet", "bout")] + [a_local.ip, world["a-h2"].ip]
    for i, src in enumerate(("b-local", "b-h2", "b-out")):
        marker = f"10.240.{a_local.ip.split('.')[2]}.{240 + i}"
        ports = (world.vxlan_port, 4789, 8472)  # the cloud's port and the usual ones
        for port in ports:
            _ns(world[src].netns, "python3", "-c", VXLAN_SEND, str(vni), marker, a_local.ip, str(port), *dsts)
        time.sleep(0.3)
        assert "lladdr" not in _neigh(a_local, marker), f"{src}'s forged VXLAN frame reached a-local"
    # control: the same datagram from a host on the underlay lands on anet
    marker = f"10.240.{a_local.ip.split('.')[2]}.250"
    _ns(
        f"cl-{world.cid}-h-h2",
        "python3",
        "-c",
        VXLAN_SEND,
        str(vni),
        marker,
        a_local.ip,
        str(world.vxlan_port),
        f"{u}129",
    )
    deadline = time.monotonic() + 5
    while "lladdr" not in _neigh(a_local, marker):
        assert time.monotonic() < deadline, "the control datagram from h2's namespace never reached a-local"
        time.sleep(0.1)


def test_tenants_stay_apart_across_hosts(world: World) -> None:
    """B on either host reaches none of A's instances on the other (TCP, UDP, ICMP, ARP); A's own two do."""
    pairs = [("b-h2", "a-local"), ("b-local", "a-h2"), ("b-out", "a-h2")]
    for src, dst in pairs:
        s, d = world[src], world[dst]
        assert f"hi-{dst}" not in _tcp(world, s, d.ip, 8080), f"{src} reached {dst} over TCP"
        assert not udp_gets_in(s.netns, d.ip, 5353), f"{src} reached {dst} over UDP"
        assert not ping_gets_in(s.netns, d.ip), f"{src} reached {dst} over ICMP"
    # ARP from the raw-socket instance (busybox arping: CAP_NET_RAW is real) finds A's address nowhere on its L2
    b_h2 = world["b-h2"]
    cli = world.tenants[B]
    own = cli.run("exec", "b-h2", "--", "arping", "-c", "1", "-w", "1", "-I", "eth0", world["b-local"].ip, check=False)
    assert own.returncode == 0 and "reply" in own.stdout.lower(), own.stdout + own.stderr  # control
    other = cli.run(
        "exec", "b-h2", "--", "arping", "-c", "1", "-w", "1", "-I", "eth0", world["a-local"].ip, check=False
    )
    assert other.returncode != 0 and "Unicast reply" not in other.stdout, other.stdout
    # controls: A's instances reach each other across hosts the same three ways
    a_h2, a_local = world["a-h2"], world["a-local"]
    assert "hi-a-local" in _tcp(world, a_h2, a_local.ip, 8080)
    assert udp_gets_in(a_h2.netns, a_local.ip, 5353) and ping_gets_in(a_h2.netns, a_local.ip)
    assert "hi-b-local" in _tcp(world, b_h2, world["b-local"].ip, 8080)


def _lookups(world: World, src: str, gateway: str, queries: list[str]) -> dict[str, str]:
    """busybox nslookup of each query at gateway, from inside src (one exec)."""
    script = "; ".join(f"echo; echo '== {q}'; nslookup {q} {gateway}" for q in queries)
    out = world.tenants[world[src].tenant].run("exec", src, "--", "sh", "-c", script, check=False).stdout
    parts = re.split(r"^== (\S+)$", out, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_dns_and_metadata_tell_nothing_of_another_tenant(world: World) -> None:
    """B's gateway on h2 (where A's a-local has never run) and on local resolve none of A's names or addresses;
    metadata answers each instance only about itself, on either host."""
    cli = world.tenants[B]
    names = []
    for a in ("a-local", "a-h2"):
        dns_name = world.tenants[A].json("show", a)["dns_name"]
        names += [a, f"{a}.anet", dns_name, dns_name.replace(".zone-a", "").replace(".zone-b", "")]
    reverse = [world[a].ip for a in ("a-local", "a-h2")]
    b_local_dns = cli.json("show", "b-local")["dns_name"]
    for src in ("b-h2", "b-local", "b-out"):
        answers = _lookups(world, src, world.gateways["bout" if src == "b-out" else "bnet"], [*names, *reverse])
        assert set(answers) == {*names, *reverse}, answers
        for q in names:
            assert not any(world[a].ip in answers[q] for a in ("a-local", "a-h2")), f"{src} resolved {q}: {answers[q]}"
        for q in reverse:
            assert "name =" not in answers[q], f"{src} resolved {q}: {answers[q]}"
    # control: B's own name resolves at the gateway on h2, from the other host
    assert world["b-local"].ip in _lookups(world, "b-h2", world.gateways["bnet"], [b_local_dns])[b_local_dns]
    # metadata: each instance gets its own document on its host; a forwarded-for header gets nothing
    for src in ("b-h2", "b-local", "a-h2"):
        inst = world[src]
        paths = [("169.254.169.254", 80, f"/latest/meta-data/{what}") for what in ("local-ipv4", "instance-id")]
        for _ in range(10):  # a busy machine may let one nc -w 1 time out: its own document must come in the end
            ip, iid = _tcp_many(world, inst, paths)
            if "HTTP/" in ip and "HTTP/" in iid:
                break
            time.sleep(1)
        assert ip.rstrip().endswith(inst.ip) and iid.rstrip().endswith(inst.id), (src, ip, iid)
    script = (
        "printf 'GET /latest/meta-data/instance-id HTTP/1.0\\r\\nX-Forwarded-For: "
        f"{world['a-local'].ip}\\r\\n\\r\\n' | nc -w 1 169.254.169.254 80"
    )
    out = cli.run("exec", "b-h2", "--", "sh", "-c", script, check=False).stdout
    assert " 403 " in out.splitlines()[0] and world["a-local"].id not in out, out


def test_a_raw_instance_cannot_pose_as_the_gateway(world: World) -> None:
    """b-h2 (--net-raw) tells b-local, across VXLAN, that the gateway is at its MAC (a request and a reply from the
    gateway's address, a frame from the gateway's MAC): b-local's entry for the gateway stays the gateway's. The
    same raw socket with b-h2's own address does update b-local's entry for b-h2 (the frames get there)."""
    b_h2, b_local, gw = world["b-h2"], world["b-local"], world.gateways["bnet"]
    _ping_until(b_local, gw)
    real = _neigh(b_local, gw).split("lladdr")[1].split()[0]
    for op in (1, 2):
        _ns(b_h2.netns, "python3", "-c", ARP_SEND, b_h2.mac, gw, b_local.mac, b_local.ip, str(op))
        _ns(b_h2.netns, "python3", "-c", ARP_SEND, real, gw, b_local.mac, b_local.ip, str(op))
        _ns(b_h2.netns, "python3", "-c", ARP_SEND, b_h2.mac, gw, "ff:ff:ff:ff:ff:ff", gw, str(op))
    time.sleep(0.3)
    now = _neigh(b_local, gw)
    assert real in now and b_h2.mac not in now, f"b-local's gateway entry became {now!r} (was {real})"
    _ping_until(b_local, gw)
    # control: a reply with b-h2's own address and MAC re-learns b-local's entry for b-h2 (fresh, REACHABLE/STALE)
    subprocess.run(["ip", "-n", b_local.netns, "neigh", "del", b_h2.ip, "dev", "eth0"], capture_output=True)
    _ns(b_h2.netns, "python3", "-c", ARP_SEND, b_h2.mac, b_h2.ip, b_local.mac, b_local.ip, "1")
    deadline = time.monotonic() + 5
    while b_h2.mac not in _neigh(b_local, b_h2.ip):
        assert time.monotonic() < deadline, "b-h2's own ARP never reached b-local: the probe is broken"
        time.sleep(0.1)


def test_h2_agent_token_writes_only_h2s_records(world: World) -> None:
    """h2's agent sees every instance, but its token writes status, events and finalizers only of its own host's
    records, beats only as h2 and uses no user route."""
    token = (world.admin.home / "hosts" / "h2.token").read_text().strip()
    a_local, b_h2 = world["a-local"], world["b-h2"]
    with httpx.Client(base_url=world.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as h2:
        seen = h2.get("/v1/agent/records", params={"kinds": "Instance"}).json()
        assert a_local.id in {i["id"] for i in seen["items"]}  # SHARED_KINDS: it may read
        # a scoped view (CLOUDLET_AGENT_VIEW=tenants) names its tenants: B's instances, and its own host's of any
        scoped = h2.get("/v1/agent/records", params={"kinds": "Instance", "tenants": B}).json()
        assert b_h2.id in {i["id"] for i in scoped["items"]} and a_local.id not in {i["id"] for i in scoped["items"]}
        before = world.tenants[A].json("show", "a-local")
        ops = [
            {"op": "status", "seq": 1, "id": a_local.id, "values": {"phase": "failed", "status": {"state": "failed"}}},
            {"op": "event", "seq": 2, "id": a_local.id, "reason": "Pwned", "message": "by h2"},
            {"op": "finalize", "seq": 3, "id": a_local.id},
            {"op": "event", "seq": 4, "id": b_h2.id, "reason": "ProbeFromH2", "message": "its own"},
        ]
        assert h2.post("/v1/agent/ops", json={"ops": ops}).status_code == 200
        beat = {"zone": "zone-a", "cpus": 1, "memory_mib": 64, "version": "x"}
        r = h2.post("/v1/hosts/local/heartbeat", json=beat)
        assert r.status_code == 403 and "belongs to host h2" in r.text, r.text
        for method, path in (("GET", "/v1/instances"), ("GET", "/v1/hosts"), ("POST", "/v1/hosts")):
            r = h2.request(method, path, json={"name": "h3", "zone": "zone-b"} if method == "POST" else None)
            assert r.status_code == 403, f"{method} {path} with h2's token: {r.status_code} {r.text}"
    after = world.tenants[A].json("show", "a-local")
    assert (after["state"], after["pid"]) == (before["state"], before["pid"]) == ("running", before["pid"])
    events = world.tenants[A].run("events", "a-local").stdout
    assert "Pwned" not in events, events
    assert "ProbeFromH2" in world.tenants[B].run("events", "b-h2").stdout  # control: its own host's record


def test_another_hosts_agent_gets_no_instance_secrets(world: World) -> None:
    """h2's agent needs a-local's name, network, address and groups (DNS, security groups across hosts), not its
    user-data; neither its token's view nor its disk cache may hold it."""
    token = (world.admin.home / "hosts" / "h2.token").read_text().strip()
    with httpx.Client(base_url=world.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as h2:
        items = h2.get("/v1/agent/records", params={"kinds": "Instance"}).json()["items"]
    a_local = next(i for i in items if i["id"] == world["a-local"].id)  # control: it does see the record
    assert a_local["spec"]["network"], a_local
    assert SECRET not in json.dumps(a_local), "h2's agent token reads a-local's user-data"
    assert SECRET not in (world.admin.home / "agents" / "h2" / "cache.json").read_text(), "h2's cache holds it"


def _call(token: str, world: World, method: str, path: str, body: Any = None) -> httpx.Response:
    with httpx.Client(base_url=world.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        if isinstance(body, str):
            return c.request(method, path, content=body, headers={"content-type": "application/json"})
        return c.request(method, path, json=body)


def test_host_routes_refuse_tenants_and_bad_bodies(world: World) -> None:
    b = world.tokens[B]
    for method, path, body in (
        ("POST", "/v1/hosts", {"name": "evil", "zone": "zone-b"}),
        ("DELETE", "/v1/hosts/h2?force=true", None),
        ("POST", "/v1/hosts/h2/cordon", None),
        ("POST", "/v1/hosts/h2/uncordon", None),
        ("POST", "/v1/hosts/h2/drain", None),
        ("GET", "/v1/hosts/h2/drain", None),
        ("GET", "/v1/hosts", None),
        ("GET", "/v1/hosts/h2", None),
    ):
        r = _call(b, world, method, path, body)
        assert r.status_code == 403 and "admin token" in r.text, (
            f"{method} {path} as a tenant: {r.status_code} {r.text}"
        )
    # A's instances by name answer B exactly as names that never existed
    for verb, body in (("recover", None), ("replace", {"from_snapshot": "snap"}), ("why", None)):
        method = "GET" if verb == "why" else "POST"
        real = _call(b, world, method, f"/v1/instances/a-local/{verb}", body)
        ghost = _call(b, world, method, f"/v1/instances/zz-local/{verb}", body)
        assert real.status_code == ghost.status_code == 404, (verb, real.text, ghost.text)
        assert real.json()["error"]["message"].replace("a-local", "zz-local") == ghost.json()["error"]["message"]
    assert world.tenants[A].json("show", "a-local")["state"] == "running"
    assert "h2" in {h["name"] for h in world.admin.json("host", "list")}
    # bad bodies and names, as the admin: a 4xx with a message naming what to fix, never a 500
    admin = (world.admin.home / "admin.token").read_text().strip()
    for method, path, body, words in (
        ("POST", "/v1/hosts", {"name": "Bad_Name", "zone": "zone-b"}, "name"),
        ("POST", "/v1/hosts", {"name": "h3"}, "zone"),
        ("POST", "/v1/hosts", {"name": "h3", "zone": "zone-b", "x": 1}, "Extra inputs"),
        ("POST", "/v1/hosts", {"name": 3, "zone": "zone-b"}, "name"),
        ("POST", "/v1/hosts", {"name": "h" * 64, "zone": "zone-b"}, "63"),
        ("POST", "/v1/hosts", "[1]", "dictionary"),
        ("POST", "/v1/hosts", "{not json", "JSON"),
        ("POST", "/v1/hosts", {"name": "h2", "zone": "zone-c"}, "zone-b"),
        ("DELETE", "/v1/hosts/nope", None, "nope"),
        ("DELETE", "/v1/hosts/h2?force=maybe", None, "force"),
        ("DELETE", "/v1/hosts/h2", None, "drain it first"),
        ("POST", "/v1/hosts/nope/cordon", None, "nope"),
        ("POST", "/v1/hosts/nope/drain", None, "nope"),
        ("POST", "/v1/instances/b-h2/replace", {}, "from_snapshot"),
        ("POST", "/v1/instances/b-h2/replace", {"from_snapshot": "../x"}, "from_snapshot"),
    ):
        token = b if path.startswith("/v1/instances") else admin
        r = _call(token, world, method, path, body)
        assert 400 <= r.status_code < 500, f"{method} {path} {body!r}: {r.status_code} {r.text}"
        assert words in r.json()["error"]["message"], f"{method} {path} {body!r}: {r.text}"


def test_an_unprivileged_user_of_the_machine_cannot_inject_vxlan(world: World) -> None:
    """Before issue 10 only root could put a frame on a tenant network (its namespaces); now the root namespace
    holds a VXLAN socket for every network. uid nobody sends b-local an ARP request from the gateway's address:
    b-local's entry for its gateway must not change."""
    dst = f"{world.underlay}129"
    route = subprocess.run(["ip", "route", "get", dst], capture_output=True, text=True).stdout
    assert route.startswith("local "), route  # the cloud's own address: the datagram never leaves the machine
    b_local, gateway = world["b-local"], world.gateways["bnet"]
    vni = _vni(next(n for n in world.tenants[B].json("network", "list") if n["name"] == "bnet")["subnet"])
    _ping_until(b_local, gateway)
    before = _neigh(b_local, gateway)
    script = "/tmp/cloudlet-test-vxlan-send.py"  # readable by nobody, unlike the test's home
    with open(script, "w") as f:
        f.write(VXLAN_SEND)
    os.chmod(script, 0o644)
    try:
        subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", script]
            + [str(vni), gateway, b_local.ip, str(world.vxlan_port), dst],
            check=True,
            timeout=30,
        )
    finally:
        os.unlink(script)
    time.sleep(0.3)
    after = _neigh(b_local, gateway)
    subprocess.run(["ip", "-n", b_local.netns, "neigh", "del", gateway, "dev", "eth0"], capture_output=True)
    assert "02:00:00:00:00:66" not in after, f"uid nobody re-pointed b-local's gateway: {before!r} -> {after!r}"


def test_the_api_refuses_to_rejoin_the_machines_own_host(world: World) -> None:
    """Last in the module: when the attack works, local's agent has lost the control plane for good."""
    admin = (world.admin.home / "admin.token").read_text().strip()
    r = _call(admin, world, "POST", "/v1/hosts", {"name": "local", "zone": "zone-a"})
    assert 400 <= r.status_code < 500 and "own host" in r.text, f"{r.status_code} {r.text[:200]}"
    time.sleep(4)
    local = {h["name"]: h for h in world.admin.json("host", "list")}["local"]
    assert local["state"] == "up", local
