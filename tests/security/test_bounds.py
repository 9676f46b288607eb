"""Every input is bounded, tried with tenant tokens against a real cloud: an exec printing 200 MB, execs that
outlive their timeout, one tenant running as many long execs as it may (and more) while another lists its
networks, request bodies over the limit (with Content-Length, chunked, and announced but never sent), and
console reads page by page. The measured figures are printed (run with -s to see them)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import CLI, CloudCLI, running_cloud

pytestmark = pytest.mark.root

MiB = 1 << 20
MARKER = "[cloudlet: output truncated: "


@dataclass
class Cloud:
    cli: CloudCLI
    url: str
    admin: httpx.Client
    a: httpx.Client
    b: httpx.Client
    a_id: str  # the id of tenant A's instance a-1
    a_env: dict[str, str]  # for the CLI as tenant A


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)


def _ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code < 300, f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}"
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    with running_cloud() as cli:
        url = json.loads((cli.home / "endpoint.json").read_text())["url"]
        tokens = {t: cli.run("tenant", "create", t).stdout.strip().splitlines()[-1] for t in ("acme", "bravo")}
        admin = _client(url, (cli.home / "admin.token").read_text().strip())
        a, b = _client(url, tokens["acme"]), _client(url, tokens["bravo"])
        _ok(a.post("/v1/networks", json={"name": "a-net"}))
        _ok(b.post("/v1/networks", json={"name": "b-net"}))
        # a-2 prints 5000 known lines (multi-byte characters included) to its console, then waits
        talk = (
            'i=0; while [ $i -lt 5000 ]; do echo "line $i é€😀"; i=$((i+1)); done; echo done; '
            "touch /tmp/feed; exec tail -f /tmp/feed"
        )
        _ok(a.post("/v1/instances", json={"name": "a-1", "image": "busybox", "network": "a-net"}))
        _ok(
            a.post(
                "/v1/instances",
                json={"name": "a-2", "image": "busybox", "network": "a-net", "command": ["/bin/sh", "-c", talk]},
            )
        )
        _ok(b.post("/v1/instances", json={"name": "b-1", "image": "busybox", "network": "b-net"}))
        deadline = time.monotonic() + 120
        for client, name in ((a, "a-1"), (a, "a-2"), (b, "b-1")):
            while (view := _ok(client.get(f"/v1/instances/{name}")))["state"] != "running":
                assert time.monotonic() < deadline, f"{name} never ran: {view}"
                time.sleep(0.2)
        a_id = _ok(a.get("/v1/instances/a-1"))["id"]
        try:
            yield Cloud(cli, url, admin, a, b, a_id, {"CLOUDLET_TOKEN": tokens["acme"]})
        finally:
            for c in (admin, a, b):
                c.close()


def _rss_mib(pid_file: Path) -> float:
    for line in Path(f"/proc/{int(pid_file.read_text())}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for the pid in {pid_file}")


def _in_container(cloud: Cloud, marker: str) -> list[str]:
    """Processes of a-1 whose command line has marker, as runc (not cloudlet) sees them."""
    ps = cloud.cli.runc("ps", f"cl-{cloud.a_id}")  # (with -o, runc 1.1 lists nothing of a user-namespaced one)
    assert ps.returncode == 0, ps.stderr
    return [line for line in ps.stdout.splitlines() if marker in line]


def test_exec_output_is_capped_and_memory_stays_bounded(cloud: Cloud) -> None:
    pids = {"cloudletd": cloud.cli.home / "cloudletd.pid", "agent": cloud.cli.home / "agents/local/agent.pid"}
    before = {what: _rss_mib(f) for what, f in pids.items()}
    command = "head -c 200000000 /dev/zero | tr '\\0' x; head -c 3000000 /dev/zero | tr '\\0' y >&2; echo end >&2"
    started = time.monotonic()
    result = _ok(cloud.a.post("/v1/instances/a-1/exec", json={"command": ["sh", "-c", command], "timeout": 120}))
    took = time.monotonic() - started
    after = {what: _rss_mib(f) for what, f in pids.items()}
    print(f"\n200 MB exec: {took:.1f} s; RSS MiB before {before}, after {after}")
    assert result["exit_code"] == 0 and result["truncated"] is True
    out, err = result["stdout"], result["stderr"]
    assert out.startswith("x" * 1000) and out.endswith(f"{MARKER}200000000 bytes printed, the first {MiB} kept]\n")
    assert len(out) < MiB + 200 and set(out[:MiB]) == {"x"}
    assert err.endswith(f"{MARKER}3000004 bytes printed, the first {MiB} kept]\n") and "end" not in err
    for what in pids:
        assert after[what] - before[what] < 100, f"{what} grew from {before[what]:.0f} to {after[what]:.0f} MiB"
    # the CLI shows the same, and a small output is whole and not marked
    proc = cloud.cli.run("exec", "a-1", "--", "sh", "-c", "head -c 2000000 /dev/zero | tr '\\0' z", env=cloud.a_env)
    assert len(proc.stdout) < MiB + 200 and proc.stdout.rstrip().endswith("the first 1048576 kept]")
    small = _ok(cloud.a.post("/v1/instances/a-1/exec", json={"command": ["echo", "hi"]}))
    assert (small["stdout"], small["truncated"]) == ("hi\n", False)


def test_exec_timeout_over_the_maximum_is_refused(cloud: Cloud) -> None:
    r = cloud.a.post("/v1/instances/a-1/exec", json={"command": ["true"], "timeout": 601})
    assert r.status_code == 403 and "maximum of 600 s" in r.json()["error"]["message"], r.text
    proc = cloud.cli.run("exec", "a-1", "--timeout", "3600", "--", "true", check=False, env=cloud.a_env)
    assert proc.returncode != 0 and "maximum of 600 s" in proc.stderr


def test_exec_past_its_timeout_is_killed_inside_the_instance(cloud: Cloud) -> None:
    # a child of the command, a background job that outlives its parent, and the command itself
    script = "sleep 4321 & (sleep 4322 &); sleep 4323; echo never"
    started = time.monotonic()
    result = _ok(cloud.a.post("/v1/instances/a-1/exec", json={"command": ["sh", "-c", script], "timeout": 2}))
    took = time.monotonic() - started
    print(f"\nexec with timeout 2 s answered after {took:.1f} s")
    assert result["exit_code"] == 124 and "did not finish within 2 s and was killed" in result["stderr"]
    assert "never" not in result["stdout"] and took < 10
    deadline = time.monotonic() + 5
    while (left := _in_container(cloud, "sleep 432")) and time.monotonic() < deadline:
        time.sleep(0.1)  # SIGKILLed processes may linger as zombies for a moment until init reaps them
    assert not left, f"processes of the timed-out exec still run in the instance: {left}"
    inside = _ok(cloud.a.post("/v1/instances/a-1/exec", json={"command": ["ps", "-o", "pid,args"]}))["stdout"]
    assert "sleep 432" not in inside


def test_exec_concurrency_is_limited_per_tenant_and_others_stay_fast(cloud: Cloud) -> None:
    most, burst = 4, 40  # CLOUDLET_EXEC_PER_TENANT's default; the API's shared threadpool has 40 threads
    exec_a = partial(cloud.a.post, "/v1/instances/a-1/exec")
    with ThreadPoolExecutor(most + burst) as pool:
        long = [pool.submit(exec_a, json={"command": ["sleep", "12"], "timeout": 30}) for _ in range(most)]
        deadline = time.monotonic() + 10
        while len(_in_container(cloud, "sleep 12")) < most:
            assert time.monotonic() < deadline, "the long execs never all ran"
            time.sleep(0.05)
        # as many more at once as there are threads in the pool every other route shares
        extra = [pool.submit(exec_a, json={"command": ["sleep", "11"], "timeout": 30}) for _ in range(burst)]
        # tenant B, meanwhile: its lists answer at once, and it may exec too
        times = []
        for _ in range(10):
            started = time.monotonic()
            _ok(cloud.b.get("/v1/networks"))
            times.append(time.monotonic() - started)
        started = time.monotonic()
        assert _ok(cloud.b.post("/v1/instances/b-1/exec", json={"command": ["true"]}))["exit_code"] == 0
        b_exec = time.monotonic() - started
        print(
            f"\nB's GET /v1/networks while A runs {most} long execs and sends {burst} more: "
            f"max {max(times) * 1000:.0f} ms, median {sorted(times)[5] * 1000:.0f} ms; B's exec {b_exec * 1000:.0f} ms"
        )
        assert max(times) < 6 and b_exec < 8  # held behind A's execs, they would take 12 s
        for f in extra:
            r = f.result()
            assert r.status_code == 429, r.text
            assert f"{most} execs of tenant acme are running" in r.json()["error"]["message"]
        assert not _in_container(cloud, "sleep 6.4")
        assert all(f.result().json()["exit_code"] == 0 for f in long)
    # the slots are given back
    assert _ok(exec_a(json={"command": ["true"]}))["exit_code"] == 0


def _no_network(cloud: Cloud, name: str) -> None:
    assert cloud.a.get(f"/v1/networks/{name}").status_code == 404
    assert name not in {n["name"] for n in _ok(cloud.a.get("/v1/networks"))["items"]}


def _too_large(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "payload_too_large" and f"limit of {MiB} bytes" in error["message"]


def test_oversized_body_is_refused_and_nothing_is_created(cloud: Cloud) -> None:
    big = {"name": "big-1", "labels": {f"k{i}": "v" * 60 for i in range(20_000)}}  # about 1.5 MB
    _too_large(cloud.a.post("/v1/networks", json=big))
    _no_network(cloud, "big-1")
    # chunked: no Content-Length, the limit is found while reading
    data = json.dumps({**big, "name": "big-2"}).encode()
    _too_large(cloud.a.post("/v1/networks", content=iter([data[i : i + 65536] for i in range(0, len(data), 65536)])))
    _no_network(cloud, "big-2")
    # announced but never sent: refused from the headers, without waiting for a byte of it
    url = urlsplit(cloud.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        token = cloud.a.headers["authorization"]
        s.sendall(
            f"POST /v1/networks HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {10 << 30}\r\n\r\n".encode()
        )
        reply = b""
        while b"}}" not in reply and (chunk := s.recv(4096)):  # the headers, then the JSON error
            reply += chunk
    reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413") and '"code": "payload_too_large"' in reply, reply
    # a body within the limit still works, chunked too
    small = json.dumps({"name": "small-1"}).encode()
    _ok(
        cloud.a.post("/v1/networks", content=iter([small[:5], small[5:]]), headers={"content-type": "application/json"})
    )
    _ok(cloud.a.delete("/v1/networks/small-1"))


def test_image_upload_has_its_own_cap(cloud: Cloud) -> None:
    """The body limit leaves PUT /v1/images/{name}/rootfs to the route's own (larger) cap."""
    r = cloud.admin.put("/v1/images/upload-1/rootfs", content=b"\0" * (2 * MiB))
    assert r.status_code != 413, r.text
    assert r.status_code >= 400  # not a tarball


def _page(cloud: Cloud, **params: int) -> dict[str, Any]:
    return _ok(cloud.a.get("/v1/instances/a-2/console", params=params))


def test_console_is_read_in_pages(cloud: Cloud) -> None:
    deadline = time.monotonic() + 30
    while "done" not in _page(cloud)["output"]:
        assert time.monotonic() < deadline, "a-2 never finished printing"
        time.sleep(0.2)
    whole = _page(cloud, offset=0, limit=MiB)
    size = whole["size"]
    assert whole["next_offset"] == size and size > 65536
    for n in (0, 2500, 4999):
        assert f"line {n} é€😀\n" in whole["output"]
    # odd-sized pages cut inside multi-byte characters: each ends on a character boundary, and they join up
    pages, at = [], 0
    while at < size:
        page = _page(cloud, offset=at, limit=997)
        assert page["offset"] == at and page["size"] == size and at < page["next_offset"] <= at + 997
        assert len(page["output"].encode()) == page["next_offset"] - at and "\ufffd" not in page["output"]
        pages.append(page["output"])
        at = page["next_offset"]
    assert "".join(pages) == whole["output"]
    # the tail by default: the last 64 KiB, starting on a character boundary
    tail = _page(cloud)
    assert tail["next_offset"] == size and size - tail["offset"] <= 65536 and "\ufffd" not in tail["output"]
    assert whole["output"].endswith(tail["output"])
    past = _page(cloud, offset=size + 100)
    assert (past["output"], past["offset"], past["next_offset"]) == ("", size, size)
    assert cloud.a.get("/v1/instances/a-2/console", params={"limit": 2 * MiB}).status_code == 422
    # the CLI: the tail by default, everything from --offset 0
    assert cloud.cli.run("console", "a-2", env=cloud.a_env).stdout == tail["output"]
    assert cloud.cli.run("console", "a-2", "--offset", "0", env=cloud.a_env).stdout == whole["output"]


def test_follow_prints_what_comes_later(cloud: Cloud, tmp_path: Path) -> None:
    env = {**cloud.cli.env, **cloud.a_env}
    out = tmp_path / "follow.out"
    with open(out, "wb") as f:
        follower = subprocess.Popen([*CLI, "console", "a-2", "--follow"], stdout=f, env=env)
    try:
        time.sleep(1)
        # a-2's init prints what lands in /tmp/feed (its console log belongs to the host: the instance's root may
        # not reopen it through /proc/1/fd/1)
        script = "echo followed-line >> /tmp/feed"
        _ok(cloud.a.post("/v1/instances/a-2/exec", json={"command": ["sh", "-c", script]}))
        deadline = time.monotonic() + 5
        while b"followed-line" not in out.read_bytes():
            assert time.monotonic() < deadline, "--follow did not print the new line"
            time.sleep(0.1)
        assert follower.poll() is None
    finally:
        follower.terminate()
        follower.wait(10)
