"""A volume's path inside an instance is checked at attach (not under /proc, /sys, /dev or /etc; a live attach
never follows a symlink), but runc mounts it again at every start and follows the symlinks it finds in the root
disk, which the tenant writes. `ln -s /dev /data` in a running instance, `volume attach v box` (the live attach
fails, the attachment stays) and a restart put the tenant's volume over the instance's /dev. The driver must
refuse a volume path that goes through a symlink or a file of the root disk before runc sees it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cloudlet.compute.drivers.base import LaunchSpec
from cloudlet.compute.drivers.runc import RuncDriver
from cloudlet.core.errors import DriverError


def _spec(rootfs: Path, volume: Path, path: str) -> LaunchSpec:
    return LaunchSpec(
        id="i-paths",
        hostname="box",
        rootfs=rootfs,
        command=["sh"],
        cpus=1.0,
        memory_mib=64,
        netns="",
        hosts="127.0.0.1\tlocalhost\n",
        resolv_conf="nameserver 10.240.0.1\n",
        mounts=((str(volume), path),),
    )


@pytest.fixture
def setup(tmp_path: Path) -> tuple[RuncDriver, Path, Path]:
    rootfs, volume = tmp_path / "disk", tmp_path / "volume"
    for d in (rootfs / "dev", rootfs / "etc", rootfs / "srv", volume):
        d.mkdir(parents=True)
    return RuncDriver(tmp_path / "home", "test"), rootfs, volume


def _destinations(driver: RuncDriver) -> list[str]:
    config = json.loads((driver.dir / "i-paths" / "config.json").read_text())
    return [m["destination"] for m in config["mounts"]]


@pytest.mark.parametrize(
    ("entry", "target", "path"),
    [
        ("data", "/dev", "/data"),  # the whole path is a symlink
        ("data", "../../../../dev", "/data"),  # relative, climbing: runc would still stay in the root
        ("opt", "/etc", "/opt/data"),  # a directory on the way is one
        ("srv/x", "/proc/sys", "/srv/x/y"),
    ],
)
def test_a_symlink_on_the_way_is_refused(
    setup: tuple[RuncDriver, Path, Path], entry: str, target: str, path: str
) -> None:
    driver, rootfs, volume = setup
    os.symlink(target, rootfs / entry)
    with pytest.raises(DriverError, match="symlink or a file"):
        driver._prepare(_spec(rootfs, volume, path))
    assert not (driver.dir / "i-paths" / "config.json").exists()


def test_a_file_on_the_way_is_refused(setup: tuple[RuncDriver, Path, Path]) -> None:
    driver, rootfs, volume = setup
    (rootfs / "data").write_text("not a directory")
    with pytest.raises(DriverError):
        driver._prepare(_spec(rootfs, volume, "/data/inner"))


@pytest.mark.parametrize("path", ["/srv", "/srv/new/deeper", "/data"])
def test_real_and_missing_directories_are_mounted(setup: tuple[RuncDriver, Path, Path], path: str) -> None:
    driver, rootfs, volume = setup
    driver._prepare(_spec(rootfs, volume, path))
    assert path in _destinations(driver)
