"""Shared fixtures: a throw-away cloud per test module (real daemon, own home and ports) with leak checks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cloudlet.core.store import Store
from tests.pg import pg_bin, postgres

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "cloudlet.cli.main"]
IS_ROOT = os.geteuid() == 0
HAVE_RUNC = shutil.which("runc") is not None


class CloudCLI:
    """Runs the real `cloudlet` command line against one cloud home."""

    def __init__(self, home: Path, extra_env: dict[str, str] | None = None) -> None:
        self.home = home
        self.env = {
            **os.environ,
            "CLOUDLET_HOME": str(home),
            "CLOUDLET_API_PORT": "0",
            "CLOUDLET_DNS_PORT": "0",
            **(extra_env or {}),
        }

    def run(
        self, *args: str, check: bool = True, timeout: float = 180, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*CLI, *args], capture_output=True, text=True, timeout=timeout, env={**self.env, **(env or {})}
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"cloudlet {' '.join(args)} exited {proc.returncode}: {proc.stderr}{proc.stdout}")
        return proc

    def json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.run(*args, "-o", "json", **kw).stdout)

    def cloud_id(self) -> str:
        return (self.home / "cloud.id").read_text().strip()

    def daemon_pid(self) -> int:
        return int((self.home / "cloudletd.pid").read_text())

    def agent_pid(self, host: str = "local") -> int:
        return int((self.home / "agents" / host / "agent.pid").read_text())

    def kill9(self, target: str) -> None:
        """kill -9 of "cloudletd", "agent" or "both" (cloudletd first)."""
        for what, pid in (("cloudletd", self.daemon_pid), ("agent", self.agent_pid)):
            if target in (what, "both"):
                try:
                    os.kill(pid(), signal.SIGKILL)
                except (OSError, ValueError):
                    pass  # already gone

    def runc(self, *args: str) -> subprocess.CompletedProcess[str]:
        """runc itself, beside cloudlet: what is really running, whatever the control plane believes."""
        return subprocess.run(
            ["runc", "--root", str(self.home / "runc"), *args], capture_output=True, text=True, timeout=60
        )

    def wait_state(self, name: str, state: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            view = self.json("show", name)
            if view["state"] == state:
                return view
            time.sleep(0.1)
        raise AssertionError(f"{name} never reached {state}: {view}")


def leaks(cloud_id: str, home: Path) -> list[str]:
    """Everything a cloud may create on the host, looked up by its names."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {line.split()[0]}" for line in netns.splitlines() if f"cl-{cloud_id}-" in line]
    with open("/proc/mounts") as f:
        found += [f"mount {line.split()[1]}" for line in f if str(home) in line]
    losetup = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    found += [f"loop device {line.split(':')[0]}" for line in losetup.splitlines() if str(home) in line]
    found += [f"link {name}" for name in os.listdir("/sys/class/net") if name.startswith(f"cl{cloud_id}")]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    found += [f"nft {line}" for line in tables.splitlines() if f"cl_{cloud_id}_" in line]
    for ctrl in Path("/sys/fs/cgroup").iterdir():
        if (ctrl / f"cloudlet-{cloud_id}").exists():
            found.append(f"cgroup {ctrl.name}/cloudlet-{cloud_id}")
    return found


ACTIVE: list[Path] = []  # homes of the clouds running now, for the logs a failing test reports


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test shows what its clouds' control plane and agent said last."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        for home in ACTIVE:
            report.sections.append((f"cloudletd.log of {home}", _tail(home / "cloudletd.log")))
            report.sections.append((f"agent.log of {home}", _tail(home / "agents/local/agent.log")))


@contextmanager
def running_cloud(extra_env: dict[str, str] | None = None, hosts: Sequence[tuple[str, str]] = ()) -> Iterator[CloudCLI]:
    """A real cloud in a fresh home, with hosts (name, zone) added after `local`; purged afterwards, and failing if
    anything of it is left."""
    if not (IS_ROOT and HAVE_RUNC):
        pytest.skip("needs root and runc")
    home = Path(tempfile.mkdtemp(prefix="cloudlet-test-"))
    cli = CloudCLI(home, extra_env)
    try:
        cli.run("up")
    except AssertionError:
        cli.run("down", "--purge", check=False)  # a half-made cloud (underlay, cloudletd) must not stay
        raise
    cid = cli.cloud_id()
    ACTIVE.append(home)
    try:
        for name, zone in hosts:
            cli.run("host", "add", name, "--zone", zone)  # returns once the host is up, its agent beating
        yield cli
    finally:
        ACTIVE.remove(home)
        pid_files = [("cloudletd", home / "cloudletd.pid")]
        pid_files += [(f"agent of {d.name}", d / "agent.pid") for d in (home / "agents").glob("*")]
        pids = {what: int(f.read_text()) for what, f in pid_files if f.exists()}
        cli.run("down", "--purge", check=False)
        left = leaks(cid, home)
        left += [f"{what} process {pid}" for what, pid in pids.items() if Path(f"/proc/{pid}").exists()]
        shutil.rmtree(home, ignore_errors=True)
        assert not left, f"cloud leaked: {left}"


@pytest.fixture(scope="module")
def cloud() -> Iterator[CloudCLI]:
    with running_cloud() as cli:
        yield cli


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A migrated store on each database (PostgreSQL started for the module, skipped where it is missing)."""
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path_factory.mktemp('db') / 'state.db'}")
        s.migrate()
        yield s
        s.close()
        return
    if pg_bin() is None:
        pytest.skip("PostgreSQL binaries not installed")
    with postgres() as url:
        s = Store(url)
        s.migrate()
        s.migrate()  # idempotent
        yield s
        s.close()
