"""ComputeDriver contract (compute/drivers/base.py): one set of assertions, run against the fake and the runc driver."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudlet.compute.drivers.base import ComputeDriver, InstanceState, LaunchSpec
from cloudlet.compute.drivers.fake import FakeDriver
from cloudlet.compute.drivers.runc import RuncDriver
from cloudlet.compute.images import _busybox_tree
from cloudlet.core.clock import RealClock
from cloudlet.core.errors import Conflict
from cloudlet.network.netns import NETNS_DIR

CGROUPS = Path("/sys/fs/cgroup")


@dataclass
class Case:
    driver: ComputeDriver
    spec: LaunchSpec
    kill_init: Callable[[int], None]  # what a crash does to the instance's init, given its pid


def _spec(iid: str, rootfs: Path | None, netns: str) -> LaunchSpec:
    return LaunchSpec(iid, "contract", rootfs, ["sleep", "3600"], 0.5, 64, netns, "127.0.0.1\tlocalhost\n", "")


def _fake() -> Iterator[Case]:
    driver = FakeDriver(clock=RealClock(), boot_seconds=0)
    iid = secrets.token_hex(13)
    yield Case(driver, _spec(iid, None, ""), lambda _pid: driver.crash(iid))
    driver.teardown()
    assert driver.list_instances() == set()


def _leftovers(cloud_id: str, home: Path) -> list[str]:
    """Everything of this cloud the runc driver, or the test, can leave on the host."""
    names = os.listdir(NETNS_DIR) if os.path.isdir(NETNS_DIR) else []
    left = [f"netns {n}" for n in names if n.startswith(f"cl-{cloud_id}-")]
    left += [f"cgroup {p}" for p in CGROUPS.glob(f"*/cloudlet-{cloud_id}")]
    runc = subprocess.run(["runc", "--root", str(home / "runc"), "list", "-q"], capture_output=True, text=True)
    return left + [f"runc container {c}" for c in runc.stdout.split()]


def _runc() -> Iterator[Case]:
    if os.geteuid() != 0 or shutil.which("runc") is None:
        pytest.skip("the runc driver needs root and runc")
    home = Path(tempfile.mkdtemp(prefix="cloudlet-contract-"))
    cloud_id = secrets.token_hex(2)
    while _leftovers(cloud_id, home):  # someone else's cloud has these names
        cloud_id = secrets.token_hex(2)
    iid = secrets.token_hex(13)
    netns, runc_root = f"cl-{cloud_id}-i-{iid}", home / "cloud/runc"
    driver = RuncDriver(home=home / "cloud", cloud_id=cloud_id)
    try:
        _busybox_tree(home / "rootfs")
        subprocess.run(["ip", "netns", "add", netns], check=True)
        spec = _spec(iid, home / "rootfs", os.path.join(NETNS_DIR, netns))
        yield Case(driver, spec, lambda pid: os.kill(pid, signal.SIGKILL))
    finally:
        try:
            driver.teardown()
        finally:  # look for leftovers, then remove them whatever the driver did
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
            left = _leftovers(cloud_id, home / "cloud")
            subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", f"cl-{iid}"], capture_output=True)
            for cg in [*CGROUPS.glob(f"*/cloudlet-{cloud_id}/{iid}"), *CGROUPS.glob(f"*/cloudlet-{cloud_id}")]:
                with contextlib.suppress(OSError):
                    cg.rmdir()
            shutil.rmtree(home, ignore_errors=True)
        assert not left, f"the runc driver's teardown leaked: {left}"


@pytest.fixture(params=["fake", pytest.param("runc", marks=pytest.mark.root)])
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    yield from _fake() if request.param == "fake" else _runc()


def test_unknown_instance_is_missing_and_deleting_it_succeeds(case: Case) -> None:
    assert case.driver.get_instance("nosuchinstance").state == InstanceState.MISSING
    case.driver.delete_instance("nosuchinstance")
    assert "nosuchinstance" not in case.driver.list_instances()


def test_create_runs_and_create_again_adopts(case: Case) -> None:
    d, iid = case.driver, case.spec.id
    created = d.create_instance(case.spec)
    assert created.state == InstanceState.RUNNING and created.pid
    got = d.get_instance(iid)
    assert (got.state, got.pid) == (InstanceState.RUNNING, created.pid)
    again = d.create_instance(case.spec)
    assert (again.state, again.pid) == (InstanceState.RUNNING, created.pid)
    assert d.list_instances() == {iid}


def test_exec(case: Case) -> None:
    d = case.driver
    d.create_instance(case.spec)
    argv = ["sh", "-c", "echo hi; exit 3"]
    result = d.exec_instance(case.spec.id, argv)
    if d.capabilities.real_processes:
        assert (result.exit_code, result.stdout) == (3, "hi\n")
    else:  # the fake's exec is a stub: it runs nothing, exits 0 and echoes the command line
        assert (result.exit_code, result.stdout) == (0, " ".join(argv) + "\n")


def test_stop_start_delete(case: Case) -> None:
    d, iid = case.driver, case.spec.id
    d.create_instance(case.spec)
    d.stop_instance(iid)
    assert d.get_instance(iid).state == InstanceState.STOPPED
    d.stop_instance(iid)
    assert d.get_instance(iid).state == InstanceState.STOPPED
    with pytest.raises(Conflict):
        d.exec_instance(iid, ["true"])
    started = d.start_instance(case.spec)
    assert started.state == InstanceState.RUNNING and started.pid
    assert d.get_instance(iid).state == InstanceState.RUNNING
    d.delete_instance(iid)
    assert d.get_instance(iid).state == InstanceState.MISSING
    assert iid not in d.list_instances()
    d.delete_instance(iid)


def test_watch_reports_a_dead_init(case: Case) -> None:
    d, iid = case.driver, case.spec.id
    exited: list[str] = []
    done = threading.Event()

    def on_exit(dead: str) -> None:
        exited.append(dead)
        done.set()

    d.watch(on_exit)
    pid = d.create_instance(case.spec).pid
    assert pid
    case.kill_init(pid)
    assert done.wait(2.0), "watch() did not report the dead init within 2 s"
    assert exited == [iid]
    deadline = time.monotonic() + 2.0
    while d.get_instance(iid).state != InstanceState.STOPPED and time.monotonic() < deadline:
        time.sleep(0.02)
    assert d.get_instance(iid).state == InstanceState.STOPPED
