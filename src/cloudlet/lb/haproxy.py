"""One HAProxy process per load balancer: its config, its process and its runtime API.

Files live in the LB's state dir (`$CLOUDLET_HOME/agents/<host>/lb/<id>/`): haproxy.cfg, haproxy.pid (the
master's), stats.sock (runtime API, level admin, `expose-fd listeners` so a reload hands the listening socket
over), master.sock (master CLI), servers.state (health and weights carried across a reload), haproxy.log.
HAProxy runs in master-worker mode, daemonised inside the LB's netns: it keeps serving while the agent restarts
or cloudletd is down; a restarted agent adopts it by its pid file. A reload (master CLI `reload`) starts a new
worker on the same listening socket; the old one finishes its connections, so none is dropped. Weights go
through the runtime API, with no reload; a drain is in the config too (a fresh start has it), so it reloads.
"""

from __future__ import annotations

__all__ = ["Server", "Frontend", "render", "HAProxy", "READONLY_PAGE", "parse_stat", "processes_under"]

import csv
import io
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudlet.core.errors import DriverError

READONLY_PAGE = (
    "<!doctype html><html><head><title>Read-only for now</title></head><body><h1>This site is read-only for now"
    "</h1><p>You can browse as usual; changes (posting, saving, buying) are paused for a short while. Please try "
    "again later.</p></body></html>"
)
# a member that stops answering is down after 2 failed checks: within inter + timeout + fastinter + timeout
# = 1.3 s (HAProxy's defaults: inter 2 s x fall 3, about 6 s); fall 3 measured 2.1 s
CHECK_INTERVAL_MS = 500
CHECK_TIMEOUT_MS = 300
CHECK_FAST_MS = 200
CONNECT_TIMEOUT_MS = 500
HARD_STOP_AFTER_S = 30  # how long an old worker may keep serving its connections after a reload
MASTER_WAIT = 5.0  # seconds a master that runs may take to answer again (it re-executes itself for a reload)


@dataclass(frozen=True)
class Server:
    name: str
    address: str
    port: int
    weight: int


@dataclass(frozen=True)
class Frontend:
    address: str
    port: int
    balance: str  # roundrobin | leastconn (the latency controller weights a roundrobin)
    health_check: str  # http:/PATH | tcp
    readonly: bool
    server_timeout_ms: int


def render(state_dir: Path, fe: Frontend, servers: list[Server]) -> str:
    """The whole config; the same inputs give the same text, so comparing texts tells whether to reload."""
    lines = [
        "global",
        f"    stats socket {state_dir / 'stats.sock'} mode 600 level admin expose-fd listeners",
        f"    server-state-file {state_dir / 'servers.state'}",
        "    maxconn 4096",
        # an old worker lives while any connection to it does, and a tenant holds both ends (its member can
        # trickle a byte now and then): after a reload it gets 30 s to finish
        f"    hard-stop-after {HARD_STOP_AFTER_S}s",
        "defaults",
        "    mode http",
        f"    timeout connect {CONNECT_TIMEOUT_MS}ms",
        "    timeout client 30s",
        f"    timeout server {fe.server_timeout_ms}ms",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        f"    timeout check {CHECK_TIMEOUT_MS}ms",
        # a request that failed before any answer is retried on another member (redispatch at every retry);
        # only idempotent ones, see the frontend
        "    retries 2",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout 0rtt-rejected",
        "    load-server-state-from-file global",
        f"    default-server inter {CHECK_INTERVAL_MS}ms fastinter {CHECK_FAST_MS}ms downinter 1s fall 2 rise 2",
        "frontend web",
        f"    bind {fe.address}:{fe.port}",
    ]
    if fe.readonly:  # METH_GET matches GET and HEAD
        lines.append(
            '    http-request return status 503 content-type "text/html; charset=utf-8" '
            f'hdr retry-after 120 string "{READONLY_PAGE}" if !METH_GET'
        )
    lines += ["    http-request disable-l7-retry if !METH_GET", "    default_backend members", "backend members"]
    lines.append(f"    balance {fe.balance}")
    if fe.health_check.startswith("http:"):
        lines.append(f"    option httpchk GET {fe.health_check.removeprefix('http:')}")
    for s in servers:
        lines.append(f"    server {s.name} {s.address}:{s.port} check weight {s.weight}")
    return "\n".join(lines) + "\n"


def parse_stat(text: str) -> dict[str, dict[str, str]]:
    """`show stat` CSV -> the backend's servers by name."""
    rows = csv.DictReader(io.StringIO(text.removeprefix("# ")))
    return {r["svname"]: r for r in rows if r.get("pxname") == "members" and r["svname"] not in ("BACKEND", "FRONTEND")}


class HAProxy:
    def __init__(self, state_dir: Path, netns: str) -> None:
        self.dir = state_dir
        self.netns = netns
        self.cfg = state_dir / "haproxy.cfg"
        self.pidfile = state_dir / "haproxy.pid"
        self.stats = state_dir / "stats.sock"
        self.master = state_dir / "master.sock"
        self.state = state_dir / "servers.state"

    def pid(self) -> int | None:
        """The master's pid, if it is alive and is this LB's HAProxy (a recycled pid is not). Asked of the master
        itself: for a reload it re-executes itself, and for that moment its CLI refuses connections and the pid
        file cannot be trusted either (reading it then is how a second HAProxy was started). So while any process
        runs this config the master is asked again, for up to MASTER_WAIT, before the pid file counts: "not
        running" would start a second HAProxy beside it."""
        deadline = time.monotonic() + MASTER_WAIT
        while True:
            try:
                for line in self.master_command("show proc").splitlines():
                    parts = line.split()
                    if len(parts) > 1 and parts[1] == "master" and self._ours(int(parts[0])):
                        return int(parts[0])
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline or not self.processes():
                break
            time.sleep(0.02)
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if self._ours(pid) else None

    def _ours(self, pid: int) -> bool:
        return _runs(pid, str(self.cfg))

    def processes(self) -> list[int]:
        """Every process running this LB's config (masters and workers, however many)."""
        return processes_under(str(self.cfg))

    def ensure(self, config: str) -> str:
        """Starts HAProxy with config, or reloads it if its config differs; returns what it did."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        running = self.pid()
        if running is not None and self.cfg.exists() and self.cfg.read_text() == config:
            return "unchanged"
        tmp = self.cfg.with_suffix(".new")
        tmp.write_text(config)
        check = subprocess.run(["haproxy", "-c", "-q", "-f", str(tmp)], capture_output=True, text=True)
        if check.returncode != 0:
            raise DriverError(f"HAProxy refused the config: {check.stderr.strip()[-500:]}")
        if running is not None:
            self._save_state()
        os.replace(tmp, self.cfg)
        if running is None:
            self._kill_leftovers()  # workers a killed master left behind would share the port with the new one
            self._start()
            return "started"
        self._reload()
        return "reloaded"

    def _start(self) -> None:
        argv = ["haproxy", "-W", "-D", "-S", f"{self.master},mode,600", "-p", str(self.pidfile), "-f", str(self.cfg)]
        with open(self.dir / "haproxy.log", "ab") as log:  # the daemon keeps these: never a pipe of ours
            proc = subprocess.run(
                ["ip", "netns", "exec", self.netns, *argv], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        if proc.returncode != 0 or self.pid() is None:
            raise DriverError(f"HAProxy did not start (exit {proc.returncode}); see {self.dir / 'haproxy.log'}")
        self._wait(lambda: self.stats.exists(), "its runtime socket")

    def _reload(self) -> None:
        before = self._reloads()
        self.master_command("reload")
        self._wait(lambda: self._reloads() > before, "the reload")

    def _reloads(self) -> int:
        for line in self.master_command("show proc").splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[1] == "master":
                return int(parts[2])
        return 0

    def _save_state(self) -> None:
        """Health and weights go over to the new worker: a member known down stays down, none is retried."""
        try:
            self.state.write_text(self.command("show servers state members"))
        except OSError:
            pass  # a fresh worker just checks again

    @staticmethod
    def _wait(done: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        """Until done() is true; a master re-executing for a reload refuses connections meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if done():
                    return
            except OSError:
                pass
            time.sleep(0.01)
        raise DriverError(f"HAProxy: timed out waiting for {what}")

    def command(self, cmd: str) -> str:
        return _ask(self.stats, cmd)

    def master_command(self, cmd: str) -> str:
        return _ask(self.master, cmd)

    def stop(self) -> None:
        """Stops the master (it stops its workers), then anything still running this config."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while self._ours(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """SIGKILL to every process still running this config (workers whose master is gone, for one)."""
        for other in self.processes():
            try:
                os.kill(other, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _runs(pid: int, path: str) -> bool:
    """Whether pid is a HAProxy (by its executable's name, not by arguments anyone may pass) naming path."""
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() != "haproxy":
            return False
        return path.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def processes_under(path: str) -> list[int]:
    """Pids of the HAProxy processes whose command line names path (a config, or a directory of LBs)."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and _runs(int(e), path)]


def _ask(path: Path, cmd: str, timeout: float = 2.0) -> str:
    """One command on a HAProxy CLI socket; the master's keeps a connection open until our side closes."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(cmd.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")
