"""The metadata service and boot-time user-data on a real cloud (busybox instances, runc, the hub's nftables).

An instance asks http://169.254.169.254 with busybox wget: its own id, every listed path, its labels as tags, its
user-data. `launch --user-data` runs the script once at boot (console and a marker show it; a restart does not
run it again); the NoCloud seed is in the instance, read-only. With cloudletd killed, metadata still answers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import CloudCLI

pytestmark = pytest.mark.root

BASE = "http://169.254.169.254/latest"
SCRIPT = "#!/bin/sh\necho user-data-ran-$(hostname)\necho ran >> /root/runs\n"


@pytest.fixture(scope="module")
def booted(cloud: CloudCLI, tmp_path_factory: pytest.TempPathFactory) -> CloudCLI:
    script = tmp_path_factory.mktemp("ud") / "boot.sh"
    script.write_text(SCRIPT)
    cloud.run(
        "launch", "busybox", "md-1", "--wait", "--memory", "32", "--label", "role=web", "--user-data", str(script)
    )
    cloud.run("launch", "busybox", "md-2", "--wait", "--memory", "32")
    return cloud


def _wget(cloud: CloudCLI, name: str, url: str, check: bool = True) -> str:
    return cloud.run("exec", name, "--", "wget", "-qO-", url, check=check).stdout


def _wget_until(cloud: CloudCLI, name: str, url: str, want: str, timeout: float = 15) -> None:
    """Until url answers want inside the instance: the agent's metadata server hears of a change through its watch."""
    deadline = time.monotonic() + timeout
    while (got := _wget(cloud, name, url, check=False)) != want:
        assert time.monotonic() < deadline, f"{url} answers {got!r}, not {want!r}"
        time.sleep(0.2)


def _console_until(cloud: CloudCLI, name: str, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = cloud.run("console", name).stdout
        if text in out:
            break
        time.sleep(0.2)
    return out


def test_instance_reads_its_own_metadata(booted: CloudCLI) -> None:
    view = booted.json("show", "md-1")
    assert _wget(booted, "md-1", f"{BASE}/meta-data/instance-id") == view["id"]
    listing = _wget(booted, "md-1", f"{BASE}/meta-data/").split()
    assert {"instance-id", "hostname", "local-ipv4", "placement/", "tags/"} <= set(listing)
    for path in listing:  # every listed path answers
        assert _wget(booted, "md-1", f"{BASE}/meta-data/{path}"), path
    assert _wget(booted, "md-1", f"{BASE}/meta-data/local-ipv4") == view["ip"]
    assert _wget(booted, "md-1", f"{BASE}/meta-data/hostname") == view["dns_name"]
    assert _wget(booted, "md-1", f"{BASE}/meta-data/placement/availability-zone") == "zone-a"
    assert _wget(booted, "md-1", f"{BASE}/meta-data/tags/instance/role") == "web"
    assert _wget(booted, "md-1", f"{BASE}/user-data") == SCRIPT
    assert _wget(booted, "md-2", f"{BASE}/meta-data/instance-id") == booted.json("show", "md-2")["id"]
    proc = booted.run("exec", "md-2", "--", "wget", "-qO-", f"{BASE}/user-data", check=False)
    assert proc.returncode != 0  # md-2 has none: 404
    # the labels are read at each request: a new one shows as soon as the agent has it
    booted.run("label", "instance", "md-1", "tier=front")
    _wget_until(booted, "md-1", f"{BASE}/meta-data/tags/instance/tier", "front")


def test_public_ipv4_follows_an_elastic_ip(booted: CloudCLI) -> None:
    assert "public-ipv4" not in _wget(booted, "md-2", f"{BASE}/meta-data/").split()
    address = booted.json("eip", "allocate", "md-ip")["address"]
    booted.run("eip", "associate", "md-ip", "md-2")
    _wget_until(booted, "md-2", f"{BASE}/meta-data/public-ipv4", address)
    assert "public-ipv4" not in _wget(booted, "md-1", f"{BASE}/meta-data/").split()
    booted.run("eip", "release", "md-ip", "--force")


def test_cli_shows_what_the_instance_reads(booted: CloudCLI) -> None:
    view = booted.json("show", "md-1")
    docs = booted.json("metadata", "md-1")
    assert docs["meta-data/instance-id"] == view["id"] and docs["user-data"] == SCRIPT
    assert booted.run("metadata", "md-1", "meta-data/local-ipv4").stdout == view["ip"] + "\n"
    assert view["id"] in booted.run("metadata", "md-1").stdout
    proc = booted.run("metadata", "md-1", "meta-data/nope", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: instance md-1 has no metadata document")


def test_user_data_runs_once_at_boot(booted: CloudCLI) -> None:
    assert "user-data-ran-md-1" in _console_until(booted, "md-1", "user-data-ran-md-1")
    iid = booted.json("show", "md-1")["id"]
    marker = f"/var/lib/cloudlet-boot/{iid}.done"
    assert booted.run("exec", "md-1", "--", "test", "-e", marker, check=False).returncode == 0
    assert booted.run("exec", "md-1", "--", "cat", "/root/runs").stdout == "ran\n"
    booted.run("restart", "md-1", "--wait")
    booted.wait_state("md-1", "running")
    assert booted.run("exec", "md-1", "--", "cat", "/root/runs").stdout == "ran\n"  # not again
    assert _wget(booted, "md-2", "http://md-1/") == "hello from md-1\n"  # then the image's command ran


def test_cloud_config_without_cloud_init_is_not_run(booted: CloudCLI, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("#cloud-config\nruncmd: [touch, /root/ran]\n")
    booted.run("launch", "busybox", "md-cc", "--wait", "--memory", "32", "--user-data", str(config))
    assert "is no script" in _console_until(booted, "md-cc", "is no script")
    assert _wget(booted, "md-cc", f"{BASE}/user-data") == config.read_text()  # still served, for tools that read it
    booted.run("delete", "md-cc", "--wait")


CLOUD_INIT_TAR = os.environ.get("CLOUDLET_TEST_CLOUD_INIT_TAR")


@pytest.mark.skipif(not CLOUD_INIT_TAR, reason="set CLOUDLET_TEST_CLOUD_INIT_TAR to a Debian rootfs with cloud-init")
def test_cloud_init_image_runs_user_data_once(booted: CloudCLI, tmp_path: Path) -> None:
    """Real cloud-init (NoCloud datasource) runs the script. The tarball is built outside the tests (debootstrap
    --include=cloud-init fails configuring python3-cryptography):
    debootstrap --variant=minbase --include=python3 bookworm R; chroot R apt-get install -y --no-install-recommends
    cloud-init (with /proc mounted); tar -C R --exclude='./dev/*' --exclude='./proc/*' -cf FILE ."""
    assert CLOUD_INIT_TAR
    script = tmp_path / "ci.sh"
    script.write_text(SCRIPT)
    booted.run("image", "import", CLOUD_INIT_TAR, "deb-ci", timeout=300)
    booted.run("launch", "deb-ci", "ci-1", "--wait", "--memory", "256", "--user-data", str(script), "--command",
               "exec sleep 100000")  # fmt: skip
    out = _console_until(booted, "ci-1", "Datasource DataSourceNoCloud", timeout=60)
    assert "user-data-ran-ci-1" in out and "Datasource DataSourceNoCloud" in out, out
    assert "cloudlet-boot" not in out  # cloud-init ran it, not the busybox runner
    booted.run("restart", "ci-1", "--wait")
    deadline = time.monotonic() + 60
    while booted.run("console", "ci-1").stdout.count("finished at") < 2:  # cloud-init's second boot is done
        assert time.monotonic() < deadline, "cloud-init did not finish after the restart"
        time.sleep(0.5)
    assert booted.run("exec", "ci-1", "--", "cat", "/root/runs").stdout == "ran\n"  # once per instance
    booted.run("delete", "ci-1", "--wait")
    booted.run("image", "delete", "deb-ci")


def test_nocloud_seed_is_present_and_read_only(booted: CloudCLI) -> None:
    iid = booted.json("show", "md-1")["id"]
    seed = "/var/lib/cloud/seed/nocloud"
    meta = booted.run("exec", "md-1", "--", "cat", f"{seed}/meta-data").stdout
    assert f"instance-id: {iid}" in meta and "local-hostname: md-1.default.zone-a.cloudlet" in meta
    assert booted.run("exec", "md-1", "--", "cat", f"{seed}/user-data").stdout == SCRIPT
    proc = booted.run("exec", "md-1", "--", "sh", "-c", f"echo x > {seed}/user-data", check=False)
    assert proc.returncode != 0 and "Read-only" in proc.stderr
    assert booted.run("exec", "md-2", "--", "cat", f"{seed}/meta-data").stdout.startswith("instance-id: ")
    assert booted.run("exec", "md-2", "--", "test", "-e", f"{seed}/user-data", check=False).returncode != 0


def test_user_data_over_16_kib_is_refused(booted: CloudCLI, tmp_path: Path) -> None:
    big = tmp_path / "big.sh"
    big.write_text("#!/bin/sh\n" + "#" * (16 << 10))
    proc = booted.run("launch", "busybox", "md-big", "--user-data", str(big), check=False)
    assert proc.returncode == 1 and "user_data" in proc.stderr and "16384" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_metadata_answers_while_cloudletd_is_down(booted: CloudCLI) -> None:
    iid = booted.json("show", "md-1")["id"]
    booted.kill9("cloudletd")
    try:
        proc = booted.runc("exec", f"cl-{iid}", "wget", "-qO-", f"{BASE}/meta-data/instance-id")
        assert proc.returncode == 0 and proc.stdout == iid, proc.stderr
    finally:
        booted.run("up")
