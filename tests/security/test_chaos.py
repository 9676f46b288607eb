"""Chaos is a tenant's to aim at its own things only. Tenant B, with its own token, tries every fault on tenant A's
instance through the API, through cloudlet.chaos.actions (by name and by a selector matching A's labels) and on
the agent's own API; then the operator's host and control-plane faults. Nothing of A's may change: same init
pid, cgroup thawed, CPU quota as launched, no nft table or qdisc in its namespace, no ChaosFault event. The
control: A itself can pause and resume it (so the checks can see a fault)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudlet.chaos.faults import FAULTS
from cloudlet.core.errors import Forbidden, NotFound
from tests.conftest import CloudCLI, running_cloud

pytestmark = pytest.mark.root

ARGS: dict[str, dict[str, Any]] = {"throttle": {"percent": 10.0}, "drop": {"percent": 50.0}}
ARGS |= {"bandwidth": {"rate_kbit": 100}, "latency": {"delay_ms": 10}}


@pytest.fixture(scope="module")
def tenants() -> Iterator[tuple[CloudCLI, dict[str, str]]]:
    with running_cloud() as cloud:
        tokens = {t: cloud.run("tenant", "create", t).stdout.strip().splitlines()[-1] for t in ("acme", "bravo")}
        cloud.run(
            "launch", "busybox", "acme-web", "--memory", "32", "--label", "role=web",
            env={"CLOUDLET_TOKEN": tokens["acme"]},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while cloud.json("show", "acme-web", env={"CLOUDLET_TOKEN": tokens["acme"]})["state"] != "running":
            assert time.monotonic() < deadline, "acme-web never ran"
            time.sleep(0.2)
        yield cloud, tokens


def _untouched(cloud: CloudCLI, token: str, pid: int) -> None:
    view = cloud.json("show", "acme-web", env={"CLOUDLET_TOKEN": token})
    assert view["pid"] == pid and view["state"] == "running"
    cg = f"cloudlet-{cloud.cloud_id()}/{view['id']}"
    assert Path(f"/sys/fs/cgroup/freezer/{cg}/freezer.state").read_text().strip() == "THAWED"
    assert Path(f"/sys/fs/cgroup/cpu/{cg}/cpu.cfs_quota_us").read_text().strip() == "100000"
    ns = ["nsenter", f"--net=/proc/{pid}/ns/net"]
    assert "cl_chaos" not in subprocess.run([*ns, "nft", "list", "tables"], capture_output=True, text=True).stdout
    qdisc = subprocess.run([*ns, "tc", "qdisc", "show", "dev", "eth0"], capture_output=True, text=True).stdout
    assert "tbf" not in qdisc and "netem" not in qdisc
    events = cloud.json("events", "acme-web", env={"CLOUDLET_TOKEN": token})
    assert not [e for e in events if e["reason"] == "ChaosFault"]


def test_another_tenant_cannot_aim_chaos_at_my_instance(
    tenants: tuple[CloudCLI, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud, tokens = tenants
    a, b = tokens["acme"], tokens["bravo"]
    pid = cloud.json("show", "acme-web", env={"CLOUDLET_TOKEN": a})["pid"]
    url = cloud.json("info")["api"]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {b}"}, timeout=30) as api:
        for fault in FAULTS:
            r = api.post("/v1/instances/acme-web/chaos", json={"fault": fault, **ARGS.get(fault, {})})
            assert r.status_code == 404, (fault, r.status_code, r.text)
    # the agent's own API wants its key, not a tenant's token
    agent = cloud.json("info")["hosts"][0]["endpoint"]
    iid = cloud.json("show", "acme-web", env={"CLOUDLET_TOKEN": a})["id"]
    r = httpx.post(f"{agent}/instances/{iid}/chaos", json={"fault": "kill"}, headers={"Authorization": f"Bearer {b}"})
    assert r.status_code == 401
    # the python actions, as B: by name, and by a selector matching A's labels
    from cloudlet.chaos import actions

    monkeypatch.setenv("CLOUDLET_HOME", str(cloud.home))
    monkeypatch.setenv("CLOUDLET_TOKEN", b)
    with pytest.raises(NotFound):
        actions.kill_instance(name="acme-web")
    with pytest.raises(Exception, match="matches no instance"):
        actions.pause_instance(selector={"labels": {"role": "web"}})
    # the operator's faults: refused to a tenant before anything is done
    for call in (
        lambda: actions.kill_host("local"),
        lambda: actions.drop_host_packets("local"),
        lambda: actions.partition_host("local"),
        lambda: actions.heal_host("local"),
        lambda: actions.start_host("local"),
        actions.kill_control_plane,
    ):
        with pytest.raises(Forbidden, match="admin token"):
            call()
    assert Path(f"/proc/{cloud.daemon_pid()}").exists()
    _untouched(cloud, a, pid)
    # the control: A's own pause is seen by the same checks
    monkeypatch.setenv("CLOUDLET_TOKEN", a)
    actions.pause_instance(name="acme-web")
    with pytest.raises(AssertionError):
        _untouched(cloud, a, pid)
    actions.resume_instance(name="acme-web")
