"""Health checks without processes: the model's rules, the fall/rise state machine, and the agent's reconciler on a
virtual clock with a scripted probe (what is written, when, and which events)."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import Executor, Future
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from cloudlet.agent.cache import RecordCache
from cloudlet.compute.instances import InstanceCreate
from cloudlet.compute.resource import INSTANCE, HealthCheck, HealthState, InstanceStatus
from cloudlet.core.clock import VirtualClock
from cloudlet.core.reconcile import Manager
from cloudlet.core.records import Resource
from cloudlet.resilience.health import HEALTH, REFRESH_S, HealthReconciler, probe, step
from cloudlet.stacks.plan import desired, plan
from cloudlet.stacks.spec import parse_stack


def test_defaults_and_description() -> None:
    c = HealthCheck.model_validate({"type": "http", "port": 80, "path": "/healthz"})
    assert (c.interval_s, c.timeout_s, c.fall, c.rise, c.expect_status) == (2.0, 1.0, 3, 2, 200)
    assert c.describe() == "http:80/healthz"
    assert HealthCheck(type="process", process="httpd").describe() == "process:httpd"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"type": "tcp"}, "needs a port"),
        ({"type": "http", "port": 0}, "greater than or equal to 1"),
        ({"type": "process"}, "needs the process name"),
        ({"type": "process", "process": "sh", "port": 80}, "port is only for tcp and http"),
        ({"type": "tcp", "port": 80, "process": "sh"}, "process is only for a process check"),
        ({"type": "tcp", "port": 80, "path": "/x"}, "only for an http check"),
        ({"type": "tcp", "port": 80, "interval_s": 1, "timeout_s": 1}, "must be less than interval_s"),
        ({"type": "tcp", "port": 80, "interval_s": 0.1}, "greater than or equal to 0.5"),
        ({"type": "tcp", "port": 80, "fall": 21}, "less than or equal to 20"),
        ({"type": "tcp", "port": 80, "rise": 0}, "greater than or equal to 1"),
        ({"type": "tcp", "port": True}, "must be a JSON number"),
        ({"type": "tcp", "port": "80"}, "must be a JSON number"),
        ({"type": "http", "port": 80, "path": "/a b\r\nX: y"}, "should match pattern"),
        ({"type": "http", "port": 80, "path": "healthz"}, "should match pattern"),
        ({"type": "process", "process": "a-name-longer-than-15"}, "at most 15 characters"),
        ({"type": "udp", "port": 53}, "'process', 'tcp' or 'http'"),
        ({"type": "tcp", "port": 80, "retries": 3}, "Extra inputs are not permitted"),
    ],
)
def test_refused_with_what_to_fix(body: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as err:
        InstanceCreate.model_validate({"name": "web", "image": "busybox", "health": body})
    assert says in str(err.value)
    assert "health" in str(err.value)


def test_fall_and_rise() -> None:
    check = HealthCheck(type="tcp", port=80, fall=3, rise=2)
    s = HealthState()
    s = step(s, check, None, 1.0)
    assert (s.state, s.successes) == ("unknown", 1)
    s = step(s, check, None, 2.0)
    assert (s.state, s.since) == ("healthy", 2.0)
    for t in (3.0, 4.0):
        s = step(s, check, "refused", t)
        assert s.state == "healthy"
    s = step(s, check, None, 5.0)  # one success in between starts the count again
    assert (s.state, s.failures) == ("healthy", 0)
    for t in (6.0, 7.0, 8.0):
        s = step(s, check, "refused", t)
    assert (s.state, s.failures, s.last_error, s.since, s.checked_at) == ("unhealthy", 3, "refused", 8.0, 8.0)
    s = step(s, check, None, 9.0)
    assert s.state == "unhealthy" and s.last_error == "refused"
    s = step(s, check, None, 10.0)
    assert (s.state, s.since) == ("healthy", 10.0)


def test_closed_port_goes_unhealthy_from_unknown_and_never_healthy() -> None:
    check = HealthCheck(type="tcp", port=80, fall=1, rise=1)
    s = step(HealthState(), check, "refused", 1.0)
    assert s.state == "unhealthy"


class _Inline(Executor):
    """Runs each probe at once, on the caller's thread: the test decides the outcome and the time."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        f: Future[Any] = Future()
        f.set_result(fn(*args, **kwargs))
        return f


class _Rig:
    def __init__(self, check: dict[str, Any] | None) -> None:
        self.clock = VirtualClock(100.0)
        self.cache = RecordCache()
        self.manager = Manager(self.cache, self.clock)
        self.answers: list[str | None] = []
        self.probes = 0
        spec = {"image": "busybox", "image_id": "i", "network": "n", "network_id": "n", "cpus": 1, "memory_mib": 64}
        self.res = Resource(
            kind=INSTANCE,
            tenant="t",
            name="web",
            spec={**spec, "health": check},
            host="h1",
            phase="running",
            status=InstanceStatus(state="running", pid=4242, ip="10.240.0.5", started_at=1.0).dump(),
        )
        self.cache.replace_all([self.res], 1)
        ctx = SimpleNamespace(store=self.cache, clock=self.clock, manager=self.manager, host="h1")
        self.rec = HealthReconciler(ctx, self.probe, _Inline())
        self.manager.register(self.rec)

    def probe(self, check: HealthCheck, pid: int, ip: str) -> str | None:
        assert (pid, ip) == (4242, "10.240.0.5")
        self.probes += 1
        return self.answers.pop(0) if self.answers else None

    def run(self, seconds: float) -> None:
        """Steps the manager over `seconds` of virtual time."""
        end = self.clock.now() + seconds
        while True:
            self.manager.run_ready()
            due = self.manager.queue.next_due()
            if due is None or due > end:
                break
            self.clock.advance_to(due)
        self.clock.advance_to(end)

    def health(self) -> HealthState | None:
        found = self.cache.get_by_id(self.res.id)
        assert found is not None
        return InstanceStatus.of(found).health

    def events(self) -> list[tuple[str, str]]:
        return [(op["reason"], op["message"]) for op in self.cache.pending_ops() if op["op"] == "event"]

    def status_writes(self) -> int:
        return sum(1 for op in self.cache._outbox if op["op"] == "status")


def test_reconciler_probes_every_interval_and_tells_transitions() -> None:
    rig = _Rig({"type": "tcp", "port": 80, "interval_s": 2, "fall": 3, "rise": 2})
    rig.run(3.1)  # probes at 0 and 2: rise 2
    h = rig.health()
    assert h is not None and h.state == "healthy" and rig.probes == 2
    assert [e[0] for e in rig.events()] == ["Healthy"]
    rig.answers = ["tcp:80: Connection refused"] * 3
    rig.run(6.0)
    h = rig.health()
    assert h is not None and (h.state, h.failures) == ("unhealthy", 3)
    unhealthy = [m for r, m in rig.events() if r == "Unhealthy"]
    assert unhealthy == ["tcp:80 failed 3 times in a row (fall 3): tcp:80: Connection refused"]
    rig.run(4.1)  # two passing probes
    assert rig.health().state == "healthy"  # type: ignore[union-attr]
    assert [e[0] for e in rig.events()] == ["Healthy", "Unhealthy", "Healthy"]


def test_status_is_written_on_changes_and_every_refresh_not_per_probe() -> None:
    rig = _Rig({"type": "tcp", "port": 80, "interval_s": 0.5, "timeout_s": 0.2})
    rig.run(60.0)
    assert rig.probes >= 110
    # the first (unknown), healthy, then one refresh per REFRESH_S
    assert rig.status_writes() <= 2 + 60 / REFRESH_S + 1


def test_restart_resets_to_unknown_and_stopped_is_unknown() -> None:
    rig = _Rig({"type": "tcp", "port": 80})
    rig.run(3.0)
    assert rig.health().state == "healthy"  # type: ignore[union-attr]
    status = InstanceStatus.of(rig.cache.get_by_id(rig.res.id)).model_copy(update={"started_at": 50.0})
    rig.cache.update_status(rig.res.id, status=status.dump())
    rig.manager.enqueue(HEALTH, rig.res.id)
    rig.run(0.01)
    assert rig.health().state == "unknown"  # type: ignore[union-attr]
    rig.cache.update_status(rig.res.id, phase="stopped")
    rig.run(5.0)
    assert rig.health() == HealthState()


def test_other_status_writes_do_not_lose_health() -> None:
    """The runtime replaces the whole status from its older copy: the check's state comes back on the next pass."""
    rig = _Rig({"type": "tcp", "port": 80})
    rig.run(3.0)
    old = InstanceStatus.of(rig.res).model_copy(update={"message": "runtime wrote this"})
    rig.cache.update_status(rig.res.id, status=old.dump())
    rig.run(2.1)
    found = InstanceStatus.of(rig.cache.get_by_id(rig.res.id))
    assert found.message == "runtime wrote this" and found.health is not None and found.health.state == "healthy"


def test_no_check_no_probe() -> None:
    rig = _Rig(None)
    rig.manager.enqueue(HEALTH, rig.res.id)
    rig.run(10.0)
    assert rig.probes == 0 and rig.health() is None


STACK = """
name: s
layers:
  web:
    count: 2
    health: {type: http, port: 80, path: /ok, fall: 2}
"""


def test_stack_layer_health_reaches_instances_and_changes_in_place() -> None:
    doc = parse_stack(STACK)
    wanted = [d for d in desired(doc) if d.kind == INSTANCE]
    assert wanted[0].fields["health"]["path"] == "/ok" and wanted[0].fields["health"]["fall"] == 2
    owned = [
        Resource(kind=INSTANCE, tenant="t", name=d.name, spec={**d.fields, "image_id": "i", "network_id": "n"})
        for d in wanted
    ]
    body = {**wanted[0].fields, "name": wanted[0].name}
    assert InstanceCreate.model_validate(body).health == HealthCheck(type="http", port=80, path="/ok", fall=2)
    assert {a.op for a in plan(desired(doc), owned)} == {"unchanged"}
    changed = [a for a in plan(desired(parse_stack(STACK.replace("fall: 2", "fall: 5"))), owned) if a.kind == INSTANCE]
    assert {a.op for a in changed} == {"update"}
    with pytest.raises(Exception, match="needs a port"):
        parse_stack(STACK.replace("port: 80, ", ""))


def test_process_probe_walks_the_real_tree() -> None:
    """A real process tree (sh, its sleep child): found by comm below the init; a missing name or a gone init fail."""
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 5
        while probe(HealthCheck(type="process", process="sleep"), proc.pid, "") is not None:
            assert time.monotonic() < deadline, "sleep never showed up below sh"
            time.sleep(0.01)
        missing = probe(HealthCheck(type="process", process="nosuch"), proc.pid, "")
        assert missing == "no process named nosuch runs in the instance"
    finally:
        proc.kill()
        proc.wait()
    gone = probe(HealthCheck(type="process", process="sleep"), proc.pid, "")
    assert gone == f"the instance's init (pid {proc.pid}) is gone"


def test_tcp_probe_refuses_the_agents_own_namespace() -> None:
    """A pid in the agent's own netns (a reused pid) is never dialled from: the probe fails instead."""
    error = probe(HealthCheck(type="tcp", port=9), os.getpid(), "127.0.0.1")
    assert error is not None and "agent's own network namespace" in error
