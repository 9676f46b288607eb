"""Attacks from inside an instance on the host, against a real cloud: each test fails if the attack works.

Container root must not be host root (user namespace per tenant), must not hold raw sockets or network admin,
must run under the ecosystem's seccomp profile, must not see the host's cgroups, must not write the kernel's
knobs; and the agent, which works as host root inside instances' filesystems, must not be steered by a tenant's
symlinks.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CloudCLI, running_cloud
from tests.helpers import wait_for


@pytest.fixture(scope="module")
def cloud() -> Iterator[CloudCLI]:
    with running_cloud() as cli:
        cli.run("launch", "busybox", "box", "--wait")
        yield cli


def sh(cloud: CloudCLI, name: str, script: str, check: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
    return cloud.run("exec", name, "--", "sh", "-c", script, check=check, **kw)


def tenant_env(cloud: CloudCLI, tenant: str) -> dict[str, str]:
    token = cloud.run("tenant", "create", tenant).stdout.strip().splitlines()[-1]
    return {"CLOUDLET_TOKEN": token}


def uid_map(cloud: CloudCLI, name: str, env: dict[str, str] | None = None) -> list[int]:
    return [int(x) for x in cloud.run("exec", name, "--", "cat", "/proc/self/uid_map", env=env).stdout.split()]


def test_container_root_is_an_unprivileged_host_uid_per_tenant(cloud: CloudCLI) -> None:
    inside, host_base, size = uid_map(cloud, "box")
    assert inside == 0 and host_base >= 65536 and size == 65536
    pid = cloud.json("show", "box")["pid"]
    assert os.stat(f"/proc/{pid}").st_uid == host_base, "init of the instance runs as host root"
    env = tenant_env(cloud, "shifty")
    cloud.run("launch", "busybox", "other", "--wait", env=env)
    _, other_base, _ = uid_map(cloud, "other", env)
    assert abs(other_base - host_base) >= 65536, "two tenants share host uids"
    disk_owner = sh(cloud, "other", "stat -c %u /bin/busybox", env=env).stdout.strip()
    assert disk_owner == "0", "the root disk is not shifted into the tenant's range"


def test_no_raw_sockets_no_network_admin_but_ping_sockets_allowed(cloud: CloudCLI) -> None:
    caps = sh(cloud, "box", "grep CapEff /proc/self/status").stdout.split()[1]
    assert not int(caps, 16) & (1 << 13), "CAP_NET_RAW is effective"
    assert not int(caps, 16) & (1 << 12), "CAP_NET_ADMIN is effective"
    assert sh(cloud, "box", "ping -c1 -W1 127.0.0.1").returncode != 0, "busybox ping (raw socket) worked"
    assert sh(cloud, "box", "ip addr add 10.240.0.250/24 dev eth0").returncode != 0, "re-addressed its interface"
    iid = cloud.json("show", "box")["id"]
    ns = f"cl-{cloud.cloud_id()}-i-{iid}"
    got = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ping_group_range"], capture_output=True, text=True
    ).stdout.split()
    assert got == ["0", "2147483647"], "ICMP datagram sockets (unprivileged ping) are not enabled"


def test_raw_sockets_only_for_an_instance_that_asks(cloud: CloudCLI) -> None:
    cloud.run("launch", "busybox", "pinger", "--net-raw", "--wait")
    assert cloud.json("show", "pinger")["net_raw"] is True
    gateway = sh(cloud, "pinger", "ip route | awk '/default/ {print $3}'").stdout.strip()
    assert sh(cloud, "pinger", f"ping -c1 -W2 {gateway}").returncode == 0, "busybox ping with CAP_NET_RAW failed"
    caps = int(sh(cloud, "pinger", "grep CapEff /proc/self/status").stdout.split()[1], 16)
    assert caps & (1 << 13) and not caps & (1 << 12), "asked for NET_RAW, must not get NET_ADMIN"
    cloud.run("delete", "pinger")


def test_seccomp_cgroup_namespace_masks_and_readonly_kernel_knobs(cloud: CloudCLI) -> None:
    status = sh(cloud, "box", "cat /proc/self/status").stdout
    assert "Seccomp:\t2" in status, "no seccomp filter"
    assert "NoNewPrivs:\t1" in status
    assert sh(cloud, "box", "cat /proc/self/cgroup").stdout.splitlines()[0].endswith(":/"), "host cgroup paths visible"
    assert sh(cloud, "box", "echo '|/tmp/x' > /proc/sys/kernel/core_pattern").returncode != 0
    assert sh(cloud, "box", "echo b > /proc/sysrq-trigger").returncode != 0
    assert sh(cloud, "box", "wc -c < /proc/kcore").stdout.strip() in ("", "0")
    assert sh(cloud, "box", "ls /sys/devices/virtual/powercap/ 2>/dev/null").stdout.strip() == ""
    # blocked by the profile (and by the missing capability): mounting, and making namespaces of its own
    assert sh(cloud, "box", "mount -t tmpfs none /mnt").returncode != 0
    assert sh(cloud, "box", "unshare -U -r true").returncode != 0, "made a user namespace of its own"


def test_pool_is_nosuid_nodev(cloud: CloudCLI) -> None:
    pool = str(cloud.home / "pool")
    with open("/proc/self/mountinfo") as f:
        opts = [line.split()[5] for line in f if line.split()[4] == pool]
    assert opts and "nosuid" in opts[-1] and "nodev" in opts[-1], f"pool mount options: {opts}"


def test_root_disk_size_limit(cloud: CloudCLI) -> None:
    cloud.run("launch", "busybox", "filler", "--disk-gib", "1", "--wait")
    proc = sh(cloud, "filler", "dd if=/dev/zero of=/fill bs=1M count=1400", timeout=300)
    assert proc.returncode != 0 and "quota exceeded" in proc.stderr.lower(), proc.stderr
    written = int(sh(cloud, "filler", "wc -c < /fill").stdout)
    assert written <= (1 << 30) + (64 << 20), f"{written} bytes written past a 1 GiB limit"
    cloud.run("delete", "filler")


def _mounted_in(cloud: CloudCLI, name: str, what: str) -> list[str]:
    return [line for line in sh(cloud, name, "cat /proc/self/mountinfo").stdout.splitlines() if what in line]


def _wait(cloud: CloudCLI, volume: str, attached: bool) -> None:
    deadline = time.monotonic() + 30
    while cloud.json("volume", "show", volume)["attached"] != attached:
        assert time.monotonic() < deadline, f"volume {volume} never became attached={attached}"
        time.sleep(0.2)


def test_detach_after_symlink_swap_removes_our_mount_not_the_proc_mask(cloud: CloudCLI) -> None:
    """The tenant renames the parent of its mount point and puts a symlink to /proc/sys in its place: detach must
    unmount the volume (wherever it is now) and leave the read-only mask over /proc/sys alone."""
    cloud.run("volume", "create", "swap", "--size", "1")
    cloud.run("volume", "attach", "swap", "box", "--path", "/srv/data")
    _wait(cloud, "swap", True)
    vid = cloud.json("volume", "show", "swap")["id"]
    assert _mounted_in(cloud, "box", vid)
    assert sh(cloud, "box", "mv /srv /srv2 && ln -s /proc/sys /srv").returncode == 0
    masks = _mounted_in(cloud, "box", " /proc/sys ")
    cloud.run("volume", "detach", "swap")
    _wait(cloud, "swap", False)
    assert not _mounted_in(cloud, "box", vid), "the volume stayed mounted after 'detached'"
    assert _mounted_in(cloud, "box", " /proc/sys ") == masks, "the /proc/sys mask was unmounted"
    assert sh(cloud, "box", "echo '|/tmp/x' > /proc/sys/kernel/core_pattern").returncode != 0
    with open("/proc/sys/kernel/core_pattern") as f:
        assert not f.read().startswith("|/tmp/x")


def test_attach_through_a_symlink_is_refused(cloud: CloudCLI) -> None:
    """A mount point reached through a symlink would put the volume over a host-side path (here /proc/sys)."""
    assert sh(cloud, "box", "ln -s /proc/sys /evil").returncode == 0
    cloud.run("volume", "create", "evil", "--size", "1")
    proc = cloud.run("volume", "attach", "evil", "box", "--path", "/evil/kernel", check=False)
    assert proc.returncode != 0 and "did not attach" in proc.stderr, proc.stderr
    assert not cloud.json("volume", "show", "evil")["attached"]
    assert not _mounted_in(cloud, "box", cloud.json("volume", "show", "evil")["id"])
    cloud.run("volume", "detach", "evil")


@pytest.mark.parametrize("path", ["//proc/x", "/./proc/x", "/srv/../proc/x", "/./sys", "/dev/../etc"])
def test_attach_paths_are_normalised_before_they_are_checked(cloud: CloudCLI, path: str) -> None:
    cloud.run("volume", "create", "norm", "--size", "1", check=False)
    proc = cloud.run("volume", "attach", "norm", "box", "--path", path, check=False)
    assert proc.returncode != 0 and "path must be" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_console_log_is_rotated_at_a_size(cloud: CloudCLI) -> None:
    cloud.run("launch", "busybox", "chatty", "--command", "head -c 40000000 /dev/zero | tr '\\0' x; sleep 3600")
    iid = cloud.json("show", "chatty")["id"]
    logs = [cloud.home / "instances" / iid / name for name in ("console.log", "console.log.1")]
    deadline = time.monotonic() + 60
    while not logs[1].exists():
        assert time.monotonic() < deadline, "console.log was never rotated"
        time.sleep(0.2)
    time.sleep(3)  # the printing is over and at least two checks have run
    sizes = [p.stat().st_size for p in logs]
    assert sum(sizes) <= 2 * (4 << 20), f"console logs hold {sizes} bytes after printing 40 MB"
    assert cloud.run("console", "chatty").stdout.strip() != "" or sizes[0] == 0
    cloud.run("delete", "chatty")


def test_a_crash_looping_instance_backs_off(cloud: CloudCLI) -> None:
    """An init that exits at once would otherwise be restarted as fast as runc can start it (tens a second)."""
    launched = time.monotonic()
    cloud.run("launch", "busybox", "looper", "--command", "exit 3")
    seen = set()
    deadline = launched + 60
    view = cloud.json("show", "looper")
    while time.monotonic() < deadline and not ("backoff" in seen and view["restarts"] >= 3):
        view = cloud.json("show", "looper")
        seen.add(view["state"])
        time.sleep(0.2)
    took = time.monotonic() - launched
    assert "backoff" in seen and view["restarts"] >= 3, (seen, view)
    # at once, then 0.2 s doubling: about 2 + log2(t / 0.2) restarts in t seconds (a loaded host makes fewer)
    bound = 3 + math.log2(took / 0.2 + 1)
    assert view["restarts"] <= bound, f"{view['restarts']} restarts in {took:.1f} s (backoff allows {bound:.1f})"
    assert "restarting in" in view["message"] or view["state"] != "backoff"
    cloud.run("delete", "looper")


def test_a_console_flood_stays_in_the_tenants_console_volume(cloud: CloudCLI) -> None:
    """Printing without end must not fill the host's disk between two rotations (it reached 1.7 GB in a second)."""
    cloud.run("launch", "busybox", "flood", "--command", "cat /dev/zero")
    iid = cloud.json("show", "flood")["id"]
    log = cloud.home / "instances" / iid / "console.log"
    # placed, cloned and started: then it floods
    wait_for(lambda: log.exists() and log.stat().st_size > 0, 60, "the flood to reach console.log")
    biggest, deadline = 0, time.monotonic() + 6
    while time.monotonic() < deadline:
        try:
            biggest = max(biggest, log.stat().st_size)
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    assert log.is_symlink() and str(cloud.home / "pool" / "consoles") in os.readlink(log)
    assert 0 < biggest <= 160 << 20, f"console.log reached {biggest} bytes"
    kept = Path(os.readlink(log))
    cloud.run("delete", "flood", "--wait")
    assert not kept.exists(), "a deleted instance's console log was left in the console volume"
