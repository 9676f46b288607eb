"""Stacks cannot be turned against the control plane or other tenants (red-team findings): hooks run on a bounded
pool of their own, never on the reconcile workers every kind and tenant shares; deploys run in the background, one
per stack and a few per tenant; stacks are a quota; flags are bounded; a document with a value its resources would
refuse is refused (400 naming line and field) instead of looping; a rule's cidr in its normal form.

Most run on the fake cloud (real control plane and agents, fake drivers) with hooks made slow by blocking the
agent's exec; one runs on a real cloud: another tenant's launch is not delayed by 7 stacks with slow setup hooks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from cloudlet.compute import instances
from cloudlet.compute.resource import INSTANCE
from cloudlet.core.clock import VirtualClock
from cloudlet.core.context import Caller
from cloudlet.core.errors import BadRequest, Conflict, TooManyRequests
from cloudlet.core.kinds import TENANT
from cloudlet.core.records import FINALIZER, Resource
from cloudlet.resilience.sim import SimCloud
from cloudlet.stacks import hookpool, stacks
from cloudlet.stacks.hookpool import POOL
from cloudlet.stacks.resource import IN_SERVICE, LIFECYCLE_LABEL, StackSpec
from cloudlet.storage.resource import TenantSpec
from tests.conftest import CloudCLI, running_cloud
from tests.helpers import fake_cloud

A, B = Caller("acme"), Caller("bravo")


class SlowHooks:
    """Blocks every exec whose script mentions 'slow' until released, counting how many run at once."""

    def __init__(self, sim: SimCloud) -> None:
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.now = self.most = self.ran = 0
        for agent in sim.agents.values():
            real = agent.exec_instance

            def exec_instance(iid: str, argv: list[str], timeout: float, real: Any = real) -> dict[str, Any]:
                if "slow" not in argv[-1]:
                    return dict(real(iid, argv, timeout))
                with self.lock:
                    self.now += 1
                    self.most = max(self.most, self.now)
                try:
                    self.gate.wait(30)
                finally:
                    with self.lock:
                        self.now -= 1
                        self.ran += 1
                return {"exit_code": 0, "stdout": "", "stderr": ""}

            agent.exec_instance = exec_instance  # type: ignore[method-assign]


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimCloud]:
    cloud = fake_cloud(tmp_path, clock=VirtualClock(), boot_seconds=1.0)
    for slot, name in enumerate(("acme", "bravo"), 1):
        cloud.cloud.store.create(Resource(kind=TENANT, tenant=name, name=name, spec=TenantSpec(uid_slot=slot).dump()))
    yield cloud
    cloud.cloud.store.close()


def settle(sim: SimCloud, seconds: float = 60) -> None:
    sim.run_until_idle(until=sim.clock.now() + seconds)


def bounded(fn: Any, limit: float = 10.0) -> float:
    """Runs fn in a thread; fails (instead of hanging) if it takes longer than `limit` seconds."""
    t0 = time.monotonic()
    worker = threading.Thread(target=fn, daemon=True)
    worker.start()
    worker.join(limit)
    assert not worker.is_alive(), f"blocked for more than {limit} s: hooks ran on the reconcile workers"
    return time.monotonic() - t0


def slow_stack(name: str, event: str = "setup") -> str:
    """A stack of one instance, NAME-1 (instance names are unique per tenant)."""
    return f"name: {name}\nlayers:\n  {name}: {{memory: 32, hooks: {{{event}: echo slow}}}}\n"


def test_slow_hooks_of_one_tenant_leave_the_control_plane_to_the_others(sim: SimCloud) -> None:
    slow = SlowHooks(sim)
    try:
        for i in range(7):
            stacks.apply_stack(sim.cloud, A, slow_stack(f"s{i}"))
        instances.launch(sim.cloud, B, instances.InstanceCreate(name="b-1", image="busybox", memory_mib=32))
        took = bounded(lambda: settle(sim))
        b1 = sim.cloud.store.get(INSTANCE, "bravo", "b-1")
        assert b1.status.get("state") == "running", b1.status
        # the tenant's share of the hook pool: 4 run, the other 3 wait their turn
        assert slow.now == hookpool.PER_TENANT and POOL.waiting("acme") == 7 - hookpool.PER_TENANT
        assert [sim.cloud.store.get(stacks.KIND, "acme", f"s{i}").phase for i in range(7)] == ["applying"] * 7
        print(f"settled in {took:.2f} s with 7 stacks' setup hooks blocked")
    finally:
        slow.gate.set()
    deadline = time.monotonic() + 20
    while slow.ran < 7 and time.monotonic() < deadline:
        settle(sim, 5)
    settle(sim)
    assert slow.ran == 7 and slow.most == hookpool.PER_TENANT
    for i in range(7):
        stack = sim.cloud.store.get(stacks.KIND, "acme", f"s{i}")
        assert stack.phase == "ready" and stack.status["members"][f"s{i}-1"]["state"] == IN_SERVICE, stack.status


def test_the_pool_shares_threads_fairly_between_tenants() -> None:
    pool = hookpool.HookPool(per_tenant=2, total=3)
    gate, order = threading.Event(), []
    lock = threading.Lock()

    def job(tag: str) -> str:
        with lock:
            order.append(tag)
        gate.wait(10)
        return tag

    futures = [pool.submit("a", lambda i=i: job(f"a{i}")) for i in range(5)]
    futures.append(pool.submit("b", lambda: job("b0")))
    time.sleep(0.2)
    assert pool.running == {"a": 2, "b": 1} and sorted(order) == ["a0", "a1", "b0"]  # b is not queued behind a
    gate.set()
    assert [f.result(10) for f in futures] == ["a0", "a1", "a2", "a3", "a4", "b0"]


def test_delete_with_slow_shutdown_hooks_answers_at_once(sim: SimCloud) -> None:
    stacks.apply_stack(sim.cloud, A, slow_stack("bye", "shutdown"))
    settle(sim)
    slow = SlowHooks(sim)
    try:
        t0 = time.monotonic()
        view = stacks.stack_view(stacks.delete_stack(sim.cloud, A, "bye"))
        assert time.monotonic() - t0 < 2 and view["state"] == "deleting"
        with pytest.raises(Conflict, match="is being deleted"):
            stacks.apply_stack(sim.cloud, A, slow_stack("bye", "shutdown"))
        bounded(lambda: settle(sim, 10))
        assert slow.now == 1  # the shutdown hook runs, on the pool
        assert sim.cloud.store.list(INSTANCE, tenant="acme")  # its instance waits for it
    finally:
        slow.gate.set()
    deadline = time.monotonic() + 20
    while sim.cloud.store.list(stacks.KIND, tenant="acme") and time.monotonic() < deadline:
        settle(sim, 10)
    assert slow.ran == 1 and sim.cloud.store.list(stacks.KIND, tenant="acme") == []
    assert sim.cloud.store.list(INSTANCE, tenant="acme") == []


def test_deploys_run_in_the_background_one_per_stack_and_few_per_tenant(sim: SimCloud) -> None:
    for i in range(3):
        stacks.apply_stack(sim.cloud, A, slow_stack(f"d{i}", "deploy"))
    slow = SlowHooks(sim)
    slow.gate.set()  # the deploys after boot pass at once
    settle(sim)
    slow.gate.clear()
    try:
        t0 = time.monotonic()
        state = stacks.start_deploy(sim.cloud, A, "d0", "d0", 1)
        assert time.monotonic() - t0 < 2 and state["state"] == "running"
        with pytest.raises(Conflict, match="a deploy of stack d0 is already running"):
            stacks.start_deploy(sim.cloud, A, "d0", "d0", 1)
        stacks.start_deploy(sim.cloud, A, "d1", "d1", 1)
        with pytest.raises(TooManyRequests, match="2 deploys of tenant acme are running"):
            stacks.start_deploy(sim.cloud, A, "d2", "d2", 1)
    finally:
        slow.gate.set()
    deadline = time.monotonic() + 20
    while stacks.deploy_state(sim.cloud, A, "d1")["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    done = stacks.deploy_state(sim.cloud, A, "d0")
    assert done["state"] == "succeeded" and [r["exit_code"] for r in done["runs"]] == [0], done
    assert stacks.start_deploy(sim.cloud, A, "d2", "d2", 1)["state"] == "running"  # room again


def test_stacks_are_a_quota(sim: SimCloud) -> None:
    for i in range(stacks.MAX_PER_TENANT):
        stacks.apply_stack(sim.cloud, A, f"name: q{i}\n")
    with pytest.raises(Conflict, match="quota exceeded: stacks would be 21, the limit is 20"):
        stacks.apply_stack(sim.cloud, A, "name: one-more\n")
    stacks.apply_stack(sim.cloud, B, "name: q0\n")  # another tenant's own


def test_flags_are_bounded(sim: SimCloud) -> None:
    stacks.apply_stack(sim.cloud, A, "name: f\nflags: {a: b}\n")
    with pytest.raises(ValidationError):
        stacks.FlagsUpdate.model_validate({"flags": {"k": "v" * 257}})
    with pytest.raises(ValidationError):
        stacks.FlagsUpdate.model_validate({"flags": {f"k{i}": "v" for i in range(65)}})
    stacks.set_flags(sim.cloud, A, "f", {f"k{i}": "v" * 256 for i in range(40)})
    changed = [e.message for e in sim.cloud.store.list_events("acme", "f") if e.reason == "FlagsChanged"]
    assert len(changed) == 1 and len(changed[0]) <= 200 and "v" * 10 not in changed[0], changed
    with pytest.raises(BadRequest, match="would have 65 flags, the most is 64"):
        stacks.set_flags(sim.cloud, A, "f", {f"j{i}": "v" for i in range(24)})  # requests accumulate
    assert len(sim.cloud.store.get(stacks.KIND, "acme", "f").spec["flags"]) == 41
    stacks.set_flags(sim.cloud, A, "f", {f"k{i}": None for i in range(10)})
    stacks.set_flags(sim.cloud, A, "f", {f"j{i}": "v" for i in range(24)})  # room once some are removed
    long_doc = "name: f2\nflags:\n" + "".join(f"  k{i}: v\n" for i in range(65))
    with pytest.raises(BadRequest, match="flags: List should have at most 64|flags: Dictionary should have at most"):
        stacks.plan_stack(sim.cloud, A, long_doc)
    with pytest.raises(BadRequest, match="line 2: flags.k: String should have at most 256"):
        stacks.plan_stack(sim.cloud, A, f"name: f3\nflags: {{k: {'v' * 257}}}\n")


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (
            "layers: {web: {}}\nload_balancers:\n  lb: {layer: web, health_check: 'get /'}\n",
            "line 4: load_balancers.lb.health_check",
        ),
        ("security_groups:\n  g: {rules: [{ports: 99999, cidr: 0.0.0.0/0}]}\n", "line 3: security_groups.g.rules[0]"),
        ("security_groups:\n  g: {rules: [{cidr: '::/0'}]}\n", "line 3: security_groups.g.rules[0]"),
        ("networks:\n  n: {subnet: abc}\n", "line 3: networks.n.subnet"),
        ("layers:\n  w:\n    volumes: [{name: d, path: /proc/x}]\n", "line 4: layers.w.volumes[0].path"),
    ],
)
def test_values_the_resources_would_refuse_are_refused_by_plan_and_apply(sim: SimCloud, body: str, where: str) -> None:
    text = "name: bad\n" + body
    for call in (stacks.plan_stack, stacks.apply_stack):
        with pytest.raises(BadRequest, match=where.replace("[", r"\[").replace("]", r"\]")):
            call(sim.cloud, A, text)
    assert sim.cloud.store.list(stacks.KIND, tenant="acme") == []


def test_a_stored_document_that_became_invalid_is_an_error_not_a_loop(sim: SimCloud) -> None:
    """A stack applied before a check existed: the reconciler says what is wrong once and stops retrying."""
    document = {"name": "old", "layers": {"web": {}}, "load_balancers": {"lb": {"layer": "web", "health_check": "x"}}}
    res = Resource(kind=stacks.KIND, tenant="acme", name="old", spec=StackSpec(document=document).dump())
    res.finalizers = [FINALIZER]
    sim.cloud.store.create(res)
    settled = sim.run_until_idle(until=sim.clock.now() + 600)
    stack = sim.cloud.store.get(stacks.KIND, "acme", "old")
    assert stack.phase == "error" and "load_balancers.lb.health_check" in stack.status["message"], stack.status
    assert settled < 20, f"{settled} passes: it keeps retrying"
    assert sim.cloud.store.list(INSTANCE, tenant="acme") == []
    with pytest.raises(Conflict, match="not valid any more"):
        stacks.start_deploy(sim.cloud, A, "old", "web", 1)
    stacks.delete_stack(sim.cloud, A, "old")
    settle(sim)
    assert sim.cloud.store.list(stacks.KIND, tenant="acme") == []


def test_a_rule_cidr_in_short_form_converges(sim: SimCloud) -> None:
    text = """\
name: sg
security_groups:
  web: {rules: [{ports: 80-80, cidr: 10.0.0.1}, {protocol: icmp, cidr: 10.1.0.0/16}]}
layers:
  w: {memory: 32, secgroups: [web]}
"""
    stacks.apply_stack(sim.cloud, A, text)
    settle(sim)
    stack = sim.cloud.store.get(stacks.KIND, "acme", "sg")
    assert stack.phase == "ready", stack.status["message"]
    group = sim.cloud.store.get("SecurityGroup", "acme", "sg-web")
    assert [(r["ports"], r["cidr"]) for r in group.spec["rules"]] == [("80", "10.0.0.1/32"), (None, "10.1.0.0/16")]
    assert stacks.plan_stack(sim.cloud, A, text)["summary"]["create"] == 0


# on a real cloud


@pytest.fixture(scope="module")
def real() -> Iterator[CloudCLI]:
    with running_cloud() as cli:
        yield cli


def _client(cloud: CloudCLI, token: str) -> httpx.Client:
    return httpx.Client(base_url=cloud.json("info")["api"], headers={"Authorization": f"Bearer {token}"}, timeout=60)


@pytest.mark.root
def test_slow_setup_hooks_of_one_tenant_do_not_delay_another_tenants_launch(real: CloudCLI) -> None:
    tokens = {}
    for name in ("slowpoke", "bystander"):
        tokens[name] = real.run("tenant", "create", name).stdout.strip().splitlines()[-1]
    a, b = _client(real, tokens["slowpoke"]), _client(real, tokens["bystander"])
    for i in range(7):
        text = f"name: s{i}\nlayers:\n  s{i}: {{memory: 32, cpus: 0.1, hooks: {{setup: sleep 400}}}}\n"
        assert a.post("/v1/stacks", json={"yaml": text}).status_code == 202
    deadline = time.monotonic() + 40  # the 7 instances boot and their setup hooks start
    while time.monotonic() < deadline:
        states = [i.get("labels", {}).get(LIFECYCLE_LABEL) for i in a.get("/v1/instances").json()["items"]]
        running = [i for i in a.get("/v1/instances").json()["items"] if i["state"] == "running"]
        if len(running) == 7:
            break
        time.sleep(0.5)
    assert len(running) == 7 and set(states) == {"setup"}, states
    time.sleep(2)  # the hooks are running now
    t0 = time.monotonic()
    resp = b.post("/v1/instances", json={"name": "b-1", "image": "busybox", "memory_mib": 32, "cpus": 0.1})
    assert resp.status_code == 202, resp.text
    while b.get("/v1/instances/b-1").json()["state"] != "running":
        assert time.monotonic() - t0 < 30, "tenant B's launch waited behind tenant A's setup hooks"
        time.sleep(0.2)
    took = time.monotonic() - t0
    print(f"tenant B's launch: running after {took:.2f} s while tenant A's 7 setup hooks sleep")
    assert a.get("/v1/stacks/s0").json()["state"] == "applying"
    for i in range(7):
        a.delete(f"/v1/stacks/s{i}")
    b.delete("/v1/instances/b-1")
    deadline = time.monotonic() + 60
    while (
        a.get("/v1/stacks").json()["items"] or b.get("/v1/instances").json()["items"]
    ) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert a.get("/v1/stacks").json()["items"] == []
