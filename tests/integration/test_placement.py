"""Placement on a real single-host cloud through the CLI: `instance why` prints each host's verdict, an
unschedulable instance names the filter that rejected each host, cordon keeps new instances off a host and
leaves the old ones running, and an unknown instance is a 404."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.conftest import CloudCLI

pytestmark = pytest.mark.root


def api_get(cloud: CloudCLI, path: str) -> tuple[int, dict[str, object]]:
    url = json.loads((cloud.home / "endpoint.json").read_text())["url"]
    token = (cloud.home / "admin.token").read_text().strip()
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_why_prints_every_host_and_its_verdict(cloud: CloudCLI) -> None:
    cloud.run("launch", "busybox", "p-1", "--wait", "--memory", "32", "--group", "app/web")
    out = cloud.run("instance", "why", "p-1").stdout
    lines = out.splitlines()
    assert lines[0] == "Instance p-1 is running on local (zone-a)"
    assert lines[1].split() == ["HOST", "ZONE", "VERDICT", "TOTAL", "WHY"]
    row = lines[2].split()
    assert row[:3] == ["local", "zone-a", "chosen"] and "spread=" in out and "free-memory=" in out
    assert "zones=" in out  # a grouped instance is weighed by its group's spread too
    assert lines[-1].startswith("weights (value x multiplier, highest total wins): zones x100")
    view = cloud.json("instance", "why", "p-1")
    assert view["chosen"] == "local" and view["request"]["group"] == "app/web" and view["more"] == 0
    assert cloud.json("show", "p-1")["placement"] == {
        "chosen": "local",
        "zone": "zone-a",
        "verdicts": {"chosen": 1, "passed": 0, "rejected": 0},
    }


def test_unschedulable_names_each_hosts_filter(cloud: CloudCLI) -> None:
    cloud.run("launch", "busybox", "p-far", "--memory", "32", "--zone", "zone-x")
    view = cloud.wait_state("p-far", "unschedulable")
    assert view["message"] == "no valid host for 32 MiB, 1 vCPU: local: zone: host is in zone-a, not zone-x"
    out = cloud.run("why", "p-far").stdout
    assert out.splitlines()[0].startswith("Instance p-far is unschedulable on no host: no valid host")
    assert out.splitlines()[2].split()[:4] == ["local", "zone-a", "rejected", "-"]
    assert "zone: host is in zone-a, not zone-x" in out.splitlines()[2]
    cloud.run("delete", "p-far")


def test_cordon_keeps_new_instances_off_and_old_ones_running(cloud: CloudCLI) -> None:
    cloud.run("launch", "busybox", "p-old", "--wait", "--memory", "32")
    assert cloud.run("host", "cordon", "local").stdout.strip() == "host local cordoned"
    assert cloud.json("host", "show", "local")["cordoned"] is True
    try:
        cloud.run("launch", "busybox", "p-new", "--memory", "32")
        view = cloud.wait_state("p-new", "unschedulable")
        assert "local: cordoned: host is cordoned" in view["message"]
        assert cloud.json("show", "p-old")["state"] == "running"
        rows = cloud.json("instance", "why", "p-new")["hosts"]
        assert rows == [
            {
                "host": "local",
                "zone": "zone-a",
                "verdict": "rejected",
                "filter": {"name": "cordoned", "reason": "host is cordoned (cloudlet host uncordon lifts it)"},
            }
        ]
    finally:
        cloud.run("host", "uncordon", "local")
    assert cloud.json("host", "show", "local")["cordoned"] is False
    cloud.run("delete", "p-new", "--wait")
    cloud.run("launch", "busybox", "p-new", "--wait", "--memory", "32")


def test_why_of_an_unknown_instance_is_a_404(cloud: CloudCLI) -> None:
    status, body = api_get(cloud, "/v1/instances/nope/why")
    assert status == 404 and body["error"]["code"] == "not_found"  # type: ignore[index]
    proc = cloud.run("instance", "why", "nope", check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "nope" in proc.stderr


def test_a_tenant_sees_its_own_decision_and_no_one_elses(cloud: CloudCLI) -> None:
    token = cloud.run("tenant", "create", "acme").stdout.strip().splitlines()[-1]
    env = {"CLOUDLET_TOKEN": token}
    proc = cloud.run("instance", "why", "p-1", check=False, env=env)  # the admin's
    assert proc.returncode == 1 and "not found" in proc.stderr
    cloud.run("launch", "busybox", "mine", "--memory", "32", "--group", "app/web", "--wait", env=env)
    view = cloud.json("instance", "why", "mine", env=env)
    assert view["chosen"] == "local"
    # the admin's p-1 is in a group of the same name on the same host: not the tenant's member, not named
    assert "p-1" not in json.dumps(view) and "admin" not in json.dumps(view)
    assert view["hosts"][0]["weights"]["hosts"] == 0.0
    cloud.run("delete", "mine", "--wait", env=env)


def test_a_group_spreads_over_real_hosts_and_zones_and_cordon_holds(cloud: CloudCLI) -> None:
    """Last in the module: it adds a host (a namespace with its own agent) in another zone."""
    cloud.run("host", "add", "h2", "--zone", "zone-b")
    hosts = {h["name"]: h for h in cloud.json("host", "list")}
    assert hosts["h2"]["state"] == "up" and isinstance(hosts["h2"]["pressure"], float)
    for i in range(4):
        cloud.run("launch", "busybox", f"g-{i}", "--memory", "32", "--group", "app/db")
    placed = {name: cloud.wait_state(name, "running", timeout=60)["host"] for name in (f"g-{i}" for i in range(4))}
    assert sorted(placed.values()) == ["h2", "h2", "local", "local"], placed
    assert placed["g-0"] != placed["g-1"]  # the second avoids the first one's host
    cloud.run("host", "cordon", "h2")
    try:
        cloud.run("launch", "busybox", "g-4", "--memory", "32", "--group", "app/db", "--wait")
        assert cloud.json("show", "g-4")["host"] == "local"
        rows = {h["host"]: h for h in cloud.json("instance", "why", "g-4")["hosts"]}
        assert rows["h2"]["verdict"] == "rejected" and rows["h2"]["filter"]["name"] == "cordoned"
        assert rows["local"]["verdict"] == "chosen"
        assert all(cloud.json("show", f"g-{i}")["state"] == "running" for i in range(4))
    finally:
        cloud.run("host", "uncordon", "h2")
    cloud.run("delete", *(f"g-{i}" for i in range(5)), "--wait")
