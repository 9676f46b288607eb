"""Two clouds side by side on default ports: the second `up` picks free ports and records them; an explicitly
chosen port that is taken is one readable line, not a traceback."""

from __future__ import annotations

import os
import socket

import pytest

from tests.conftest import CloudCLI, running_cloud

pytestmark = pytest.mark.root


@pytest.mark.slow  # two whole clouds up and down: 40 s; make test stays within its 25 minutes (the slow tier runs it)
def test_second_cloud_beside_the_first() -> None:
    defaults = {"CLOUDLET_API_PORT": "", "CLOUDLET_DNS_PORT": ""}  # as a user would: no ports chosen
    with running_cloud(defaults) as first, running_cloud(defaults) as second:
        a, b = first.json("info"), second.json("info")
        assert a["cloud_id"] != b["cloud_id"]
        assert a["ports"]["api"] != b["ports"]["api"]
        assert a["ports"]["dns@local"] != b["ports"]["dns@local"]
        for cloud in (first, second):
            cloud.run("launch", "busybox", "twin", "--wait", "--memory", "32")
            assert "hello from twin" in cloud.run("exec", "twin", "--", "wget", "-qO-", "http://twin/").stdout
        # each remembers its ports across a restart
        second.run("down")
        second.run("up")
        assert second.json("info")["ports"]["api"] == b["ports"]["api"]


def test_taken_explicit_port_is_one_line(cloud: CloudCLI) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        other = CloudCLI(cloud.home.parent / f"{cloud.home.name}-other", {"CLOUDLET_API_PORT": str(port)})
        try:
            proc = other.run("up", check=False)
            assert proc.returncode == 1, proc.stdout
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and f"API port {port} is taken; set CLOUDLET_API_PORT" in lines[0], proc.stderr
            assert "Traceback" not in proc.stderr
        finally:
            other.run("down", "--purge", check=False)
            os.system(f"rm -rf {other.home}")
