"""Health checks: the agent probes each running instance of its host that has one, from inside the instance.

Detection only. `HealthReconciler` keeps, per instance, the check's state (`compute/resource.py` HealthState):
`fall` failures in a row make it unhealthy, `rise` successes healthy, each change an event (`Unhealthy`,
`Healthy`); the control plane's recovery acts on `unhealthy`. It stops and restarts nothing itself.

Probes run on one bounded pool (WORKERS threads), each within the check's timeout, off the reconcile workers:
a pass submits a due probe and its completion enqueues the instance again. tcp and http connect to the
instance's address from a socket made inside the instance's network namespace (entered through the recorded
init pid's `/proc/PID/ns/net`, never the agent's own namespace), so no tenant address is dialled from a host
namespace; http reads at most HTTP_READ bytes. A process check walks the init's tree through
`/proc/PID/task/*/children` and reads each `comm`: no tenant-controlled path is followed.

Status is written on a change of state, when the record's copy disagrees with ours (another status write
replaced it), and every REFRESH_S otherwise: never per probe, so the outbox does not flood. A restart of the
instance (new pid or start time) starts again from unknown. Writes go to the agent's cache, so with cloudletd
down the checks go on and the outbox reports them once it is back.
"""

from __future__ import annotations

__all__ = ["HEALTH", "HealthReconciler", "Probe", "probe", "step"]

import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass

from cloudlet.compute.instances import KIND
from cloudlet.compute.resource import HealthCheck, HealthState, InstanceSpec, InstanceStatus
from cloudlet.core.context import HostContext
from cloudlet.core.reconcile import Result, Watches
from cloudlet.core.records import Resource
from cloudlet.network.netns import run_in_netns

HEALTH = "InstanceHealth"  # the work queue's kind for this reconciler's keys (an Instance's id)
WORKERS = 8
REFRESH_S = 10.0
HTTP_READ = 4096
MAX_PROCESSES = 4096  # a process check looks at no more of an instance's tree than this
ERROR_MAX = 200

# (check, init pid, address) -> None when healthy, else what failed
Probe = Callable[[HealthCheck, int, str], str | None]


def step(state: HealthState, check: HealthCheck, error: str | None, now: float) -> HealthState:
    """The state after one probe (error None: it passed). Pure: `now` is the wall clock of the probe."""
    if error is None:
        successes, failures = state.successes + 1, 0
        new = "healthy" if successes >= check.rise else state.state
    else:
        successes, failures = 0, state.failures + 1
        new = "unhealthy" if failures >= check.fall else state.state
    return HealthState(
        state=new,
        failures=failures,
        successes=successes,
        last_error=state.last_error if error is None else error[:ERROR_MAX],
        checked_at=now,
        since=now if new != state.state else state.since,
    )


def _netns_socket(pid: int) -> socket.socket:
    """A TCP socket in the network namespace of process pid, refused if that is the agent's own (a reused pid)."""
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_ino == os.stat("/proc/self/ns/net").st_ino:
            raise OSError(f"process {pid} is in the agent's own network namespace, not the instance's")
        # run_in_netns joins the file it is given (an absolute path is taken as is): this fd, checked above
        return run_in_netns(f"/proc/self/fd/{fd}", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    finally:
        os.close(fd)


def _connect(pid: int, ip: str, port: int, deadline: float) -> socket.socket:
    sock = _netns_socket(pid)
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.connect((ip, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _http(check: HealthCheck, pid: int, ip: str, deadline: float) -> str | None:
    port = check.port or 0
    with _connect(pid, ip, port, deadline) as sock:
        request = f"GET {check.path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: cloudlet-health\r\n\r\n"
        sock.sendall(request.encode())
        answer = b""
        while b"\r\n" not in answer and len(answer) < HTTP_READ:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = sock.recv(HTTP_READ - len(answer))
            if not chunk:
                break
            answer += chunk
    line = answer.split(b"\r\n", 1)[0].decode("ascii", "replace")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return f"http {check.path}: not an HTTP answer ({line[:60]!r})"
    if int(parts[1]) != check.expect_status:
        return f"http {check.path}: status {parts[1]}, expected {check.expect_status}"
    return None


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read(64).decode("utf-8", "replace").rstrip("\n")
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                out += [int(c) for c in f.read(1 << 16).split()]
        except (OSError, ValueError):
            continue  # the task ended meanwhile
    return out


def _process(check: HealthCheck, pid: int) -> str | None:
    if _comm(pid) is None:
        return f"the instance's init (pid {pid}) is gone"
    todo, seen = [pid], {pid}
    while todo and len(seen) <= MAX_PROCESSES:
        p = todo.pop()
        if _comm(p) == check.process:
            return None
        for child in _children(p):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return f"no process named {check.process} runs in the instance"


def probe(check: HealthCheck, pid: int, ip: str) -> str | None:
    """One probe, within check.timeout_s: None if it passed, else what failed (one line)."""
    if check.type == "process":
        return _process(check, pid)
    deadline = time.monotonic() + check.timeout_s
    try:
        if check.type == "http":
            return _http(check, pid, ip, deadline)
        _connect(pid, ip, check.port or 0, deadline).close()
        return None
    except TimeoutError:
        return f"{check.describe()}: no answer within {check.timeout_s:g} s"
    except OSError as exc:
        return f"{check.describe()}: {exc.strerror or exc}"


@dataclass
class _Tracker:
    check: HealthCheck
    run: tuple[int, float | None]  # (pid, started_at): another means the instance restarted
    state: HealthState
    next_due: float = 0.0  # on the agent's clock
    written: float = float("-inf")
    future: Future[str | None] | None = None


class HealthReconciler:
    kind = HEALTH

    def __init__(self, ctx: HostContext, probe_fn: Probe | None = None, executor: Executor | None = None) -> None:
        self.ctx = ctx
        self.records = ctx.store
        # fake compute drivers have no processes or namespaces to probe: nothing is checked (or written) there
        # unless a probe is given (tests)
        self.probe = probe_fn or (probe if ctx.compute.capabilities.real_processes else None)
        self.pool = executor or ThreadPoolExecutor(WORKERS, thread_name_prefix="health")
        self._trackers: dict[str, _Tracker] = {}
        self._lock = threading.Lock()
        self.watches: Watches = {KIND: self._mine}
        for res in self.records.list(KIND):
            for rid in self._mine(res):
                ctx.manager.enqueue(HEALTH, rid)

    def _mine(self, res: Resource) -> list[str]:
        if self.probe is None:
            return []
        if res.host != self.ctx.host:
            return [res.id] if res.id in self._trackers else []
        return [res.id] if res.id in self._trackers or InstanceSpec.of(res).health or res.status.get("health") else []

    def reconcile(self, rid: str) -> Result:
        if self.probe is None:
            return Result()  # nothing to probe with: status.health is left to whoever writes it (simulations)
        res = self.records.get_by_id(rid)
        spec = InstanceSpec.of(res) if res is not None else None
        status = InstanceStatus.of(res) if res is not None else None
        if res is None or spec is None or status is None or res.host != self.ctx.host or res.deleting:
            with self._lock:
                self._trackers.pop(rid, None)
            return Result()
        check = spec.health
        if check is None or res.phase != "running" or not status.pid or not status.ip:
            with self._lock:
                self._trackers.pop(rid, None)
            # no check: no health; not running: unknown until it runs again
            wanted = None if check is None else HealthState()
            if status.health != wanted:
                self._write(res, wanted)
            return Result()
        run = (status.pid, status.started_at)
        with self._lock:
            tracker = self._trackers.get(rid)
            if tracker is None or tracker.run != run or tracker.check != check:
                tracker = _Tracker(check, run, HealthState(since=time.time()))
                self._trackers[rid] = tracker
        now = self.ctx.clock.now()
        old = tracker.state
        if tracker.future is not None and tracker.future.done():
            error = tracker.future.result()
            tracker.future = None
            tracker.state = step(old, check, error, time.time())
        if tracker.state.state != old.state:
            self._tell(res, check, tracker.state)
        if (
            tracker.state.state != old.state
            or status.health is None
            or status.health.state != tracker.state.state
            or now - tracker.written >= REFRESH_S
        ):
            self._write(res, tracker.state)
            tracker.written = now
        if tracker.future is None and now >= tracker.next_due:
            tracker.next_due = now + check.interval_s
            tracker.future = self._submit(rid, check, status.pid, status.ip)
        if tracker.future is not None:
            return Result(requeue_after=check.timeout_s + 0.5)  # its completion enqueues us first, normally
        return Result(requeue_after=max(0.0, tracker.next_due - now))

    def _submit(self, rid: str, check: HealthCheck, pid: int, ip: str) -> Future[str | None]:
        probe_fn = self.probe
        assert probe_fn is not None

        def run() -> str | None:
            try:
                return probe_fn(check, pid, ip)
            except Exception as exc:  # a probe's own failure counts as a failed check, with its reason
                return f"{check.describe()}: {exc}"

        future = self.pool.submit(run)
        future.add_done_callback(lambda _: self.ctx.manager.enqueue(HEALTH, rid))
        return future

    def _tell(self, res: Resource, check: HealthCheck, state: HealthState) -> None:
        if state.state == "unhealthy":
            message = (
                f"{check.describe()} failed {state.failures} times in a row (fall {check.fall}): {state.last_error}"
            )
            self.records.add_event(res, "Unhealthy", message, "Warning")
        elif state.state == "healthy":
            self.records.add_event(
                res, "Healthy", f"{check.describe()} passed {state.successes} times in a row (rise {check.rise})"
            )

    def _write(self, res: Resource, health: HealthState | None) -> None:
        current = self.records.get_by_id(res.id)  # the newest copy: keep every other status field as it is now
        if current is None:
            return
        status = InstanceStatus.of(current).model_copy(update={"health": health})
        self.records.update_status(current.id, status=status.dump())
