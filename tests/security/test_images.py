"""Attacks on images by a tenant with an ordinary token, against a real cloud: crafted tarballs, oversized uploads,
and rewriting or reading images that are not its own. Each test fails if the attack works."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CloudCLI, running_cloud
from tests.security.tarballs import Member, archive, entry, symlink_chain_escape

pytestmark = pytest.mark.root

CAP = 8 << 20  # the upload cap of this cloud: small, so oversize is cheap to send
ENV = {"CLOUDLET_MAX_UPLOAD_BYTES": str(CAP), "CLOUDLET_MAX_IMAGE_FILES": "2000"}


@pytest.fixture(scope="module")
def cloud() -> Iterator[CloudCLI]:
    with running_cloud(ENV) as cli:
        yield cli


def tenant(cloud: CloudCLI, name: str) -> dict[str, str]:
    token = cloud.run("tenant", "create", name).stdout.strip().splitlines()[-1]
    return {"CLOUDLET_TOKEN": token}


@pytest.fixture(scope="module")
def acme(cloud: CloudCLI) -> dict[str, str]:
    return tenant(cloud, "acme")


@pytest.fixture(scope="module")
def evil(cloud: CloudCLI) -> dict[str, str]:
    return tenant(cloud, "evil")


def api(cloud: CloudCLI) -> tuple[str, int]:
    url = json.loads((cloud.home / "endpoint.json").read_text())["url"]
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def raw_put(
    cloud: CloudCLI, env: dict[str, str], path: str, chunks: Iterator[bytes], length: int | None = None
) -> tuple[int | None, bytes]:
    """A PUT sent by hand, chunk by chunk, so the test sees what the server does while the body arrives.
    Returns (status, body); status None if the server closed the connection without answering."""
    sock = socket.create_connection(api(cloud), timeout=60)
    head = f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {env['CLOUDLET_TOKEN']}\r\n"
    head += "Content-Type: application/octet-stream\r\n"
    head += f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    try:
        sock.sendall((head + "\r\n").encode())
        for chunk in chunks:
            sock.sendall(chunk if length is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk))
        if length is None:
            sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the server may answer and close before the body is sent
    reply = b""
    try:
        while block := sock.recv(65536):
            reply += block
            if b"\r\n\r\n" in reply and len(reply.split(b"\r\n\r\n", 1)[1]) >= _length(reply):
                break
    except OSError:
        pass
    finally:
        sock.close()
    if not reply:
        return None, b""
    return int(reply.split(b" ", 2)[1]), reply.split(b"\r\n\r\n", 1)[1]


def _length(reply: bytes) -> int:
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def uploads(cloud: CloudCLI) -> list[Path]:
    """What waits on the host's disk: cloudletd's uploads, and the copies it streams to the agent."""
    return list((cloud.home / "uploads").glob("*")) + list((cloud.home / "agents/local").glob("*.tar"))


def pool_volumes(cloud: CloudCLI) -> list[str]:
    return [p.name for p in (cloud.home / "pool/images").glob("*")] if (cloud.home / "pool/images").is_dir() else []


def import_tar(cloud: CloudCLI, env: dict[str, str], tmp_path: Path, name: str, members: list[Member]) -> Any:
    tar = tmp_path / f"{name}.tar"
    tar.write_bytes(archive(*members))
    return cloud.run("image", "import", str(tar), name, check=False, env=env)


def rootfs(tmp_path: Path) -> Path:
    """A small real root filesystem (busybox) as a tarball."""
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for applet in ("sh", "sleep", "cat", "id"):
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc").mkdir()
    (root / "etc/motd").write_text("mine\n")
    tar = tmp_path / "rootfs.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(root, arcname=".")
    return tar


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """What the attacks aim at: a directory on the host outside the pool, with a 0600 secret in it."""
    target = tmp_path / "outside"
    target.mkdir()
    (target / "shadow").write_text("root:secret:1::::::\n")
    (target / "shadow").chmod(0o600)
    return target


def untouched(outside: Path) -> None:
    shadow = outside / "shadow"
    assert sorted(p.name for p in outside.iterdir()) == ["shadow"], "a file appeared outside the pool"
    assert shadow.read_text() == "root:secret:1::::::\n" and stat.S_IMODE(shadow.stat().st_mode) == 0o600
    assert shadow.stat().st_nlink == 1, "the host file was hard-linked"


def refused(proc: Any, *words: str) -> None:
    assert proc.returncode == 1, proc.stdout
    assert "could not unpack" in proc.stderr or any(w in proc.stderr for w in words), proc.stderr


def test_symlink_chain_escape_writes_nothing_outside(
    cloud: CloudCLI, acme: dict[str, str], tmp_path: Path, outside: Path
) -> None:
    before = pool_volumes(cloud)
    # unpacked into the pool: aim the chain at the pool's directory of images, then at the host directory
    dest = cloud.home / "pool/images/import-0000000000000000.partial"
    proc = import_tar(cloud, acme, tmp_path, "chain", symlink_chain_escape(dest, outside, "shadow"))
    refused(proc, "symlink")
    untouched(outside)
    members = symlink_chain_escape(dest, outside, "shadow")
    members[-4] = entry("escape", tarfile.SYMTYPE, link=str(outside))  # an absolute escape, then through it
    refused(import_tar(cloud, acme, tmp_path, "chain2", members), "symlink")
    untouched(outside)
    assert pool_volumes(cloud) == before and uploads(cloud) == []
    assert "chain" not in {i["name"] for i in cloud.json("image", "list", env=acme)}


@pytest.mark.parametrize(
    "attack",
    [
        "dotdot",
        "absolute",
        "symlink-dir-then-file",
        "relative-symlink-out",
        "hardlink-absolute",
        "hardlink-through-symlink",
        "device",
        "fifo",
    ],
)
def test_crafted_tarballs_are_refused(
    cloud: CloudCLI, acme: dict[str, str], tmp_path: Path, outside: Path, attack: str
) -> None:
    depth = "../" * (len(cloud.home.parts) + 2)  # enough to climb from anywhere in the pool to /
    members = {
        "dotdot": [entry(f"{depth}{str(outside)[1:]}/pwned", data=b"x")],
        "absolute": [entry(f"{outside}/pwned", data=b"x")],
        "symlink-dir-then-file": [
            entry("lib", tarfile.SYMTYPE, link=str(outside)),
            entry("lib/pwned", data=b"x"),
        ],
        "relative-symlink-out": [entry("esc", tarfile.SYMTYPE, link=f"{depth}{str(outside)[1:]}")],
        "hardlink-absolute": [entry("etc/shadow", tarfile.LNKTYPE, link=str(outside / "shadow"), mode=0o644)],
        "hardlink-through-symlink": [
            entry("etc", tarfile.SYMTYPE, link=str(outside)),
            entry("leak", tarfile.LNKTYPE, link="etc/shadow", mode=0o644),
        ],
        "device": [entry("dev/sda", tarfile.BLKTYPE)],
        "fifo": [entry("fifo", tarfile.FIFOTYPE)],
    }[attack]
    base = [entry("bin/sh", data=b"#!")]  # else it would be refused only for having no shell
    before = pool_volumes(cloud)
    proc = import_tar(cloud, acme, tmp_path, f"a-{attack}", [*base, *members])
    refused(proc, "outside", "absolute", "'..'", "device", "FIFO", "symlink", "hard link")
    untouched(outside)
    assert pool_volumes(cloud) == before and uploads(cloud) == []


def test_many_files_and_oversize_are_refused(cloud: CloudCLI, acme: dict[str, str], tmp_path: Path) -> None:
    many = [entry("bin/sh", data=b"#!"), *(entry(f"f/{i}") for i in range(2100))]
    refused(import_tar(cloud, acme, tmp_path, "many", many), "members")
    big = tmp_path / "big.tar"
    big.write_bytes(archive(entry("bin/sh", data=b"#!"), entry("blob", data=os.urandom(CAP))))
    proc = cloud.run("image", "import", str(big), "big", check=False, env=acme)
    assert proc.returncode == 1 and "more than an image upload may be" in proc.stderr, proc.stderr
    assert uploads(cloud) == []


def test_oversized_upload_is_stopped_before_it_fills_the_disk(cloud: CloudCLI, acme: dict[str, str]) -> None:
    # declared too big: refused before any of the body is read
    status, body = raw_put(cloud, acme, "/v1/images/huge/rootfs", iter([b"x" * 1024]), length=100 << 30)
    assert status == 413, body
    # streamed (chunked) past the cap: nothing past the cap is kept while it streams, and nothing after
    seen: list[int] = []

    def chunks() -> Iterator[bytes]:
        block = b"\0" * (1 << 20)
        for _ in range(4 * CAP >> 20):
            seen.append(sum(p.stat().st_size for p in uploads(cloud) if p.exists()))
            yield block

    status, body = raw_put(cloud, acme, "/v1/images/huge/rootfs", chunks())
    assert status == 413, body
    assert max(seen) <= CAP, f"the upload dir held {max(seen)} bytes, over the cap {CAP}"
    assert uploads(cloud) == []
    assert "huge" not in {i["name"] for i in cloud.json("image", "list", env=acme)}


def test_a_taken_or_public_name_is_refused_before_the_upload(cloud: CloudCLI, acme: dict[str, str]) -> None:
    for name, codes in (("busybox", {403}), ("Bad_Name", {400, 422})):
        status, body = raw_put(cloud, acme, f"/v1/images/{name}/rootfs", iter([b"\0" * 1024]), length=1 << 30)
        assert status in codes, body
    assert uploads(cloud) == []


def test_tenants_cannot_rewrite_or_delete_shared_or_foreign_images(
    cloud: CloudCLI, acme: dict[str, str], evil: dict[str, str], tmp_path: Path
) -> None:
    def record(name: str, env: dict[str, str] | None = None) -> dict[str, object]:
        """The image as stored: without `hosts`, which the agents' heartbeats fill in as they get their copies."""
        view: dict[str, object] = cloud.json("image", "show", name, env=env)
        return {k: v for k, v in view.items() if k != "hosts"}

    busybox, tar = record("busybox"), rootfs(tmp_path)
    # the public image: no rebuild, no import over it, no delete
    proc = cloud.run("image", "build", "busybox", "--packages", "no-such-package", "--no-wait", check=False, env=evil)
    assert proc.returncode == 1 and "only the admin" in proc.stderr, proc.stderr
    proc = cloud.run("image", "import", str(tar), "busybox", check=False, env=evil)
    assert proc.returncode == 1 and "only the admin" in proc.stderr, proc.stderr
    proc = cloud.run("image", "delete", "busybox", check=False, env=evil)
    assert proc.returncode == 1 and "only the admin" in proc.stderr, proc.stderr
    assert record("busybox") == busybox
    # acme's own image: evil sees none of it, cannot touch it; its own of that name is a different image
    cloud.run("image", "import", str(tar), "mine", env=acme)
    mine = record("mine", env=acme)
    assert mine["tenant"] == "acme" and mine["state"] == "ready"
    assert "mine" not in {i["name"] for i in cloud.json("image", "list", env=evil)}
    assert "mine" not in {i["name"] for i in cloud.json("image", "list")}  # nor is it public
    proc = cloud.run("image", "show", "mine", check=False, env=evil)
    assert proc.returncode == 1 and "not found" in proc.stderr
    proc = cloud.run("launch", "mine", "steal", check=False, env=evil)
    assert proc.returncode == 1 and "not found" in proc.stderr and "mine" not in proc.stderr.split("available")[1]
    proc = cloud.run("image", "delete", "mine", check=False, env=evil)
    assert proc.returncode == 1 and "not found" in proc.stderr
    assert record("mine", env=acme) == mine
    # a tenant may not shadow a public image either
    proc = cloud.run("image", "build", "busybox", check=False, env=acme)
    assert proc.returncode == 1
    # acme launches its own image; deleting it is refused while the instance boots from it
    cloud.run("launch", "mine", "m-1", "--command", "exec sleep 3600", "--wait", env=acme)
    assert cloud.run("exec", "m-1", "--", "cat", "/etc/motd", env=acme).stdout == "mine\n"
    proc = cloud.run("image", "delete", "mine", check=False, env=acme)
    assert proc.returncode == 1 and "m-1" in proc.stderr, proc.stderr
    cloud.run("delete", "m-1", "--wait", env=acme)
    cloud.run("image", "delete", "mine", env=acme)
    assert "mine" not in {i["name"] for i in cloud.json("image", "list", env=acme)}
    deadline = time.monotonic() + 10
    while f"{mine['digest']}" in pool_volumes(cloud) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert mine["digest"] not in pool_volumes(cloud), "the deleted image's pool volume is still there"


def test_busybox_repairs_itself_at_up(cloud: CloudCLI) -> None:
    """Even the admin's rebuild of busybox is refused; a busybox record broken anyway is reset by `up`."""
    proc = cloud.run("image", "build", "busybox", "--packages", "no-such-package", check=False)
    assert proc.returncode == 1 and "built in" in proc.stderr
    # break it behind the API's back, as an older version let a tenant do
    db = sqlite3.connect(cloud.home / "state.db")
    with db:
        db.execute(
            "UPDATE resources SET phase='failed', spec=json_set(spec, '$.source', 'debootstrap') "
            "WHERE kind='Image' AND name='busybox'"
        )
    db.close()
    cloud.run("down")
    cloud.run("up")
    deadline = time.monotonic() + 30
    while cloud.json("image", "show", "busybox")["state"] != "ready" and time.monotonic() < deadline:
        time.sleep(0.2)
    view = cloud.json("image", "show", "busybox")
    assert view["state"] == "ready" and view["source"] == "busybox"
    cloud.run("launch", "busybox", "bb-1", "--wait")
    cloud.run("delete", "bb-1", "--wait")
