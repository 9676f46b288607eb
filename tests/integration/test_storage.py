"""Volumes, snapshots, clones and the copy-on-write graph, on the btrfs pool and on the dir pool alike."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import CloudCLI, running_cloud

pytestmark = pytest.mark.root


@pytest.fixture(scope="module", params=["btrfs", "dir"])
def pcloud(request: pytest.FixtureRequest) -> Iterator[CloudCLI]:
    with running_cloud({"CLOUDLET_STORAGE_POOL": request.param}) as cli:
        cli.pool = request.param  # type: ignore[attr-defined]
        yield cli


def test_pool_kind_and_root_disks_are_clones(pcloud: CloudCLI) -> None:
    pcloud.run("launch", "busybox", "r-1", "--wait")
    pcloud.run("launch", "busybox", "r-2", "--wait")
    report = pcloud.json("storage", "usage")
    assert report["pool"] == pcloud.pool  # type: ignore[attr-defined]
    disks = [v for v in report["volumes"] if v["kind"] == "Instance"]
    image = next(v for v in report["volumes"] if v["kind"] == "Image")
    assert len(disks) == 2 and all(d["logical_bytes"] >= image["logical_bytes"] // 2 for d in disks)
    if pcloud.pool == "btrfs":  # type: ignore[attr-defined]
        assert all(d["exclusive_bytes"] < 1 << 20 for d in disks), disks  # clones share the image's blocks
    # instances write to their own disk only
    pcloud.run("exec", "r-1", "--", "sh", "-c", "echo mine > /etc/only-r1")
    assert pcloud.run("exec", "r-2", "--", "cat", "/etc/only-r1", check=False).returncode != 0


def test_instance_snapshot_boots_with_its_contents(pcloud: CloudCLI) -> None:
    pcloud.run("exec", "r-1", "--", "sh", "-c", "echo before > /root/state")
    snap = pcloud.json("snapshot", "create", "r-1", "--name", "r1-snap")
    assert snap["state"] == "ready" and snap["frozen"] is True  # the instance was frozen while copied
    pcloud.run("exec", "r-1", "--", "sh", "-c", "echo after > /root/state")
    pcloud.run("launch", "--from-snapshot", "r1-snap", "r-3", "--wait")
    assert pcloud.run("exec", "r-3", "--", "cat", "/root/state").stdout == "before\n"
    assert pcloud.json("show", "r-1")["state"] == "running"  # thawed


def test_volume_snapshot_clone_and_graph(pcloud: CloudCLI) -> None:
    pcloud.run("volume", "create", "data", "--size", "1")
    path = pcloud.json("volume", "show", "data")
    assert path["state"] == "ready" and path["size_gib"] == 1
    pcloud.run("snapshot", "create", "data", "--name", "d-snap")
    pcloud.run("volume", "clone", "d-snap", "data-copy")
    refused = pcloud.run("volume", "delete", "data", check=False)
    assert refused.returncode == 1 and "snapshot d-snap" in refused.stderr
    refused = pcloud.run("snapshot", "delete", "d-snap", check=False)
    assert refused.returncode == 1 and "volume data-copy" in refused.stderr
    refused = pcloud.run("delete", "r-1", check=False)
    assert refused.returncode == 1 and "snapshot r1-snap" in refused.stderr
    deleted = pcloud.json("volume", "delete", "data", "--cascade")[0]["items"]
    assert [d["name"] for d in deleted] == ["data-copy", "d-snap", "data"]  # deepest dependents first


def test_attach_live_survives_restart_and_snapshots_with_instance(pcloud: CloudCLI) -> None:
    pcloud.run("volume", "create", "vol-a", "--size", "1")
    pcloud.run("volume", "attach", "vol-a", "r-2", "--path", "/srv/data")
    pcloud.run("exec", "r-2", "--", "sh", "-c", "echo persisted > /srv/data/file")  # no restart needed
    pcloud.run("restart", "r-2", "--wait")
    assert pcloud.run("exec", "r-2", "--", "cat", "/srv/data/file").stdout == "persisted\n"
    snap = pcloud.json("snapshot", "create", "r-2", "--name", "r2-full")
    assert snap["volumes"] == ["vol-a"] and snap["frozen"] is True
    refused = pcloud.run("volume", "delete", "vol-a", "--cascade", check=False)
    assert refused.returncode == 1 and "detach it first" in refused.stderr
    taken = pcloud.run("volume", "attach", "vol-a", "r-3", check=False)
    assert taken.returncode == 1 and "attached to instance r-2" in taken.stderr
    pcloud.run("volume", "detach", "vol-a")
    assert pcloud.run("exec", "r-2", "--", "cat", "/srv/data/file", check=False).returncode != 0
    # a copy launched from the snapshot gets a clone of the volume, at the same path, with the same data
    pcloud.run("launch", "--from-snapshot", "r2-full", "r-2b", "--wait")
    assert pcloud.run("exec", "r-2b", "--", "cat", "/srv/data/file").stdout == "persisted\n"
    clone = pcloud.json("volume", "show", "r-2b-vol-a")
    assert clone["attached_to"] == "r-2b" and clone["path"] == "/srv/data" and clone["state"] == "ready"
    pcloud.run("delete", "r-2b", "--wait")
    pcloud.run("volume", "delete", "r-2b-vol-a")
    pcloud.run("snapshot", "delete", "r2-full")
    pcloud.run("volume", "delete", "vol-a")


def test_tenant_quota_names_the_limit(pcloud: CloudCLI) -> None:
    token = pcloud.run("tenant", "create", "small").stdout.strip().splitlines()[-1]
    pcloud.run("tenant", "quota", "small", "--volumes", "1", "--gib", "3", "--snapshots", "1")
    env = {"CLOUDLET_TOKEN": token}
    pcloud.run("volume", "create", "q1", "--size", "2", env=env)
    usage = pcloud.json("tenant", "show", "small", env=env)["quota"]
    assert usage["volumes"] == {"used": 1, "limit": 1} and usage["volume_gib"] == {"used": 2, "limit": 3}
    over = pcloud.run("volume", "create", "q2", "--size", "1", check=False, env=env)
    assert over.returncode == 1 and "quota exceeded: volumes" in over.stderr
    pcloud.run("snapshot", "create", "q1", "--name", "qs1", env=env)
    over = pcloud.run("snapshot", "create", "q1", "--name", "qs2", check=False, env=env)
    assert over.returncode == 1 and "quota exceeded: snapshots" in over.stderr
    denied = pcloud.run("tenant", "quota", "small", "--volumes", "99", check=False, env=env)
    assert denied.returncode == 1 and "admin" in denied.stderr
    pcloud.run("volume", "delete", "q1", "--cascade", env=env)


def test_volume_size_limit_is_enforced(pcloud: CloudCLI) -> None:
    if pcloud.pool != "btrfs":  # type: ignore[attr-defined]
        pytest.skip("the dir pool does not enforce sizes (documented)")
    pcloud.run("volume", "create", "small", "--size", "1")
    pcloud.run("volume", "attach", "small", "r-3", "--path", "/small")
    fill = pcloud.run(
        "exec", "r-3", "--", "sh", "-c", "head -c 1200000000 /dev/zero > /small/fill", check=False, timeout=120
    )
    assert fill.returncode != 0, fill.stderr  # EDQUOT, which busybox reports as an I/O error
    written = int(pcloud.run("exec", "r-3", "--", "stat", "-c", "%s", "/small/fill").stdout)
    assert written <= 1 << 30, written
    pcloud.run("exec", "r-3", "--", "rm", "/small/fill")
    pcloud.run("volume", "detach", "small")
    pcloud.run("volume", "delete", "small")


def test_bad_storage_input(pcloud: CloudCLI) -> None:
    for args, needle in (
        (["volume", "create", "Bad", "--size", "1"], "invalid volume name"),
        (["volume", "create", "v", "--size", "0"], "size_gib"),
        (["volume", "clone", "nope", "x"], "not found"),
        (["snapshot", "create", "ghost"], "no volume or instance named"),
        (["launch", "--from-snapshot", "nope", "x"], "not found"),
    ):
        proc = pcloud.run(*args, check=False)
        assert proc.returncode == 1 and needle in proc.stderr and proc.stderr.count("\n") == 1, (args, proc.stderr)


def test_gc_finds_and_frees_space_held_by_nothing(pcloud: CloudCLI) -> None:
    import time

    deadline = time.monotonic() + 20
    while pcloud.run("storage", "gc", "--check", check=False).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.2)  # deletions above finish in the background
    assert pcloud.run("storage", "gc", "--check", check=False).returncode == 0
    stray = pcloud.home / "pool" / "volumes" / "01straystraystraystraystra"
    if pcloud.pool == "btrfs":  # type: ignore[attr-defined]
        import subprocess

        subprocess.run(["btrfs", "subvolume", "create", str(stray)], check=True, capture_output=True)
    else:
        stray.mkdir(parents=True)
    (stray / "junk").write_bytes(b"x" * 100_000)
    check = pcloud.run("storage", "gc", "--check", "-o", "json", check=False)
    assert check.returncode == 1 and "01straystraystraystraystra" in check.stdout
    pcloud.run("storage", "gc")
    assert pcloud.run("storage", "gc", "--check", check=False).returncode == 0
    assert pcloud.run("repair", "--check", check=False).returncode == 0
