"""Images for real: import a rootfs tarball; build Debian 12 with debootstrap (slow), boot both."""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import CloudCLI

pytestmark = pytest.mark.root


def test_import_tarball_and_boot(cloud: CloudCLI, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for applet in ("sh", "sleep", "cat", "echo", "hostname"):
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc/motd").write_text("imported image\n")
    tar = tmp_path / "mini.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(root, arcname=".")
    cloud.run("image", "import", str(tar), "mini")
    assert {i["name"]: i["state"] for i in cloud.json("image", "list")}["mini"] == "ready"
    cloud.run("launch", "mini", "m-1", "--command", "exec sleep 3600", "--wait")
    assert cloud.run("exec", "m-1", "--", "cat", "/etc/motd").stdout == "imported image\n"
    cloud.run("delete", "m-1", "--wait")
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tarball")
    proc = cloud.run("image", "import", str(bad), "broken", check=False)
    assert proc.returncode == 1 and "could not unpack" in proc.stderr


@pytest.mark.slow
def test_debian_build_boot_and_cache(cloud: CloudCLI) -> None:
    cloud.run("image", "build", "debian-12", timeout=900)
    img = {i["name"]: i for i in cloud.json("image", "list")}["debian-12"]
    assert img["state"] == "ready" and img["source"] == "debootstrap"
    cloud.run("launch", "debian-12", "deb-1", "--wait")
    assert cloud.run("exec", "deb-1", "--", "cat", "/etc/debian_version").stdout.startswith("12.")
    assert cloud.run("exec", "deb-1", "--", "getent", "hosts", "deb-1.default.zone-a.cloudlet").returncode == 0
    t = time.monotonic()
    cloud.run("image", "build", "debian-12")  # same content: cached
    assert time.monotonic() - t < 10
    cloud.run("delete", "deb-1", "--wait")
