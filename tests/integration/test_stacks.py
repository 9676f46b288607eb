"""A stack of busybox instances on a real cloud, through the real CLI: plan, apply --wait, applying again changes
nothing, the stack's DNS names from inside an instance and from the host, lifecycle hooks with the membership in
their environment, exec -l, flags, rolling deploy, scaling down (newest first, shutdown hook, configure again),
and delete removing everything."""

from __future__ import annotations

import importlib.util
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dnslib import DNSRecord

from tests.conftest import CloudCLI
from tests.integration.test_lb import APP, Load, in_netns, request

pytestmark = pytest.mark.root
EXAMPLE = Path(__file__).parents[2] / "examples" / "stack-busybox.yaml"


@pytest.fixture(scope="module")
def demo(cloud: CloudCLI, tmp_path_factory: pytest.TempPathFactory) -> CloudCLI:
    out = cloud.run("stack", "plan", str(EXAMPLE)).stdout
    assert "+ stack demo" in out and "+ instance web-2" in out and "Plan: 7 to create" in out, out
    started = time.monotonic()
    out = cloud.run("stack", "apply", str(EXAMPLE), "--wait", timeout=240).stdout
    print(f"stack apply --wait: {time.monotonic() - started:.1f} s")
    assert "Stack demo ready" in out and "instance web-1: running" in out, out
    return cloud


def _eventually(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.2)


def _ips(cloud: CloudCLI) -> dict[str, str]:
    return {i["name"]: i["ip"] for i in cloud.json("list")}


def test_applying_again_changes_nothing(demo: CloudCLI) -> None:
    before = demo.json("stack", "show", "demo")
    out = demo.run("stack", "apply", str(EXAMPLE)).stdout
    assert "Plan: 0 to create, 0 to update, 0 to replace, 0 to delete (7 unchanged)" in out, out
    after = demo.json("stack", "show", "demo")
    assert after["generation"] == before["generation"] and after["state"] == "ready"
    assert [s["name"] for s in demo.json("stack", "list")] == ["demo"]


def test_owned_resources_and_labels(demo: CloudCLI) -> None:
    view = demo.json("stack", "show", "demo")
    made = ["db-1", "db-1-data", "demo-db", "demo-net", "demo-web", "web-1", "web-2"]
    assert sorted(p["name"] for p in view["progress"]) == made
    assert {m["state"] for m in view["members"].values()} == {"in-service"}
    web = demo.json("list", "-l", "cloudlet.io/stack=demo,cloudlet.io/layer=web")
    assert sorted(i["name"] for i in web) == ["web-1", "web-2"] and {i["network"] for i in web} == {"demo-net"}
    vol = demo.json("volume", "show", "db-1-data")
    assert vol["attached_to"] == "db-1" or vol.get("attachment", {}).get("instance") == "db-1", vol


def test_dns_names_from_inside_and_from_the_host(demo: CloudCLI) -> None:
    ips = _ips(demo)
    for name, want in (
        ("web-1.demo.zone-a.cloudlet", [ips["web-1"]]),
        ("web-2.demo.cloudlet", [ips["web-2"]]),
        ("web.demo.cloudlet", sorted([ips["web-1"], ips["web-2"]])),
    ):
        out = demo.run("exec", "db-1", "--", "nslookup", name).stdout
        got = sorted(re.findall(r"Address: *(10\.240\.\d+\.\d+)", out))
        assert got == want, (name, out)
    # and the web tier reaches the db by its stack name over HTTP
    out = demo.run("exec", "web-1", "--", "wget", "-qO-", "http://db-1.demo.cloudlet/").stdout
    assert out.strip() == "db db-1"
    port = demo.json("info")["ports"]["dns@local"]
    reply = DNSRecord.parse(DNSRecord.question("web.demo.cloudlet").send("127.0.0.1", port, timeout=2))
    assert sorted(str(r.rdata) for r in reply.rr) == sorted([ips["web-1"], ips["web-2"]])


def test_security_groups_let_in_only_what_the_stack_says(demo: CloudCLI) -> None:
    ips = _ips(demo)
    # allowed: db -> web:80 by the web group's rule, web -> web within its own group
    assert demo.run("exec", "db-1", "--", "timeout", "3", "wget", "-qO-", f"http://{ips['web-1']}/").stdout.strip() == (
        "hello from web-1"
    )
    assert "hello from web-1" in demo.run("exec", "web-2", "--", "timeout", "3", "wget", "-qO-", "http://web-1/").stdout
    # denied: an instance of the same network outside both groups
    demo.run("launch", "busybox", "probe", "--network", "demo-net", "--memory", "32", "--wait")
    try:
        denied = demo.run("exec", "probe", "--", "timeout", "2", "wget", "-qO-", f"http://{ips['web-1']}/", check=False)
        assert denied.returncode != 0 and "hello" not in denied.stdout
        # the probe itself answers (the refusal is the group's, not a dead network)
        assert (
            "hello from probe"
            in demo.run("exec", "probe", "--", "timeout", "3", "wget", "-qO-", "http://127.0.0.1/").stdout
        )
    finally:
        demo.run("delete", "probe", "--wait")


def test_hooks_ran_with_the_membership(demo: CloudCLI) -> None:
    ips = _ips(demo)
    assert demo.run("exec", "web-2", "--", "cat", "/tmp/setup").stdout == "web-2 set up\n"
    assert demo.run("exec", "web-1", "--", "cat", "/tmp/deploy").stdout == "deployed deploy\n"
    want = f"web={ips['web-1']} {ips['web-2']} db={ips['db-1']}\n"

    def configured() -> bool:
        return demo.run("exec", "web-1", "--", "cat", "/tmp/configure", check=False).stdout == want

    _eventually(configured, f"configure on web-1 wrote {want!r}")
    assert demo.run("exec", "db-1", "--", "cat", "/tmp/configure").stdout == f"web={ips['web-1']} {ips['web-2']}\n"


def test_exec_on_every_matching_instance(demo: CloudCLI) -> None:
    out = demo.run("exec", "-l", "cloudlet.io/layer=web", "--", "cat", "/tmp/setup").stdout
    assert out == "=== web-1: exit 0\nweb-1 set up\n=== web-2: exit 0\nweb-2 set up\n", out
    failed = demo.run("exec", "-l", "cloudlet.io/stack=demo", "--", "sh", "-c", "test $(hostname) != db-1", check=False)
    assert failed.returncode == 1 and "=== db-1: exit 1" in failed.stdout and "=== web-2: exit 0" in failed.stdout
    none = demo.run("exec", "-l", "cloudlet.io/stack=nothing", "--", "true", check=False)
    assert none.returncode == 1 and "no running instance matches" in none.stderr


def test_flags_and_readonly(demo: CloudCLI) -> None:
    assert "Stack demo flags: color=blue, beta=on" in demo.run("stack", "flag", "demo", "beta=on").stdout
    metadata = "http://169.254.169.254/latest/meta-data/flags/beta"
    if importlib.util.find_spec("cloudlet.network.metadata") is not None:
        _eventually(
            lambda: (
                demo.run("exec", "web-1", "--", "timeout", "2", "wget", "-qO-", metadata, check=False).stdout == "on"
            ),
            "flag beta in web-1's metadata",
        )
    demo.run("stack", "readonly", "demo", "on")
    assert demo.json("stack", "show", "demo")["flags"] == {"color": "blue", "beta": "on", "readonly": "true"}
    demo.run("stack", "readonly", "demo", "off")
    demo.run("stack", "flag", "demo", "beta-")
    assert demo.json("stack", "show", "demo")["flags"] == {"color": "blue"}


def test_rolling_deploy_runs_deploy_a_batch_at_a_time(demo: CloudCLI) -> None:
    out = demo.run("stack", "deploy", "demo", "--layer", "web", "--batch", "1").stdout
    assert out.splitlines()[:2] == ["web-1: deploy exit 0", "web-2: deploy exit 0"], out
    assert demo.run("exec", "web-2", "--", "cat", "/tmp/deploy").stdout == "deployed deploy\ndeployed deploy\n"
    assert demo.json("stack", "show", "demo")["members"]["web-1"]["state"] == "in-service"
    bad = demo.run("stack", "deploy", "demo", "--layer", "nope", check=False)
    assert bad.returncode == 1 and "has no layer 'nope'" in bad.stderr


def test_invalid_documents_name_line_and_field(demo: CloudCLI, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("    count: 2", "    cuont: 2"))
    proc = demo.run("stack", "plan", str(bad), check=False)
    line = EXAMPLE.read_text().splitlines().index("    count: 2") + 1
    assert proc.returncode == 1 and f"line {line}: layers.web.cuont: unknown field" in proc.stderr, proc.stderr
    schema = demo.run("stack", "schema").stdout
    assert '"additionalProperties": false' in schema


def test_a_failed_setup_keeps_the_instance_out_of_service(demo: CloudCLI, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nlayers:\n  b:\n    memory: 32\n    hooks: {setup: 'echo no disk; exit 3'}\n")
    proc = demo.run("stack", "apply", str(broken), "--wait", check=False, timeout=120)
    assert proc.returncode == 1 and "b-1 failed: setup exited 3: no disk" in proc.stderr, proc.stderr
    assert demo.json("show", "b-1")["labels"]["cloudlet.io/lifecycle"] == "failed"
    port = demo.json("info")["ports"]["dns@local"]
    reply = DNSRecord.parse(DNSRecord.question("b.broken.cloudlet").send("127.0.0.1", port, timeout=2))
    assert reply.header.rcode == 3  # NXDOMAIN: no healthy member
    events = demo.run("events", "broken").stdout
    assert "HookFailed" in events and "setup on b-1: exit 3" in events, events
    demo.run("stack", "delete", "broken", "--wait", timeout=120)


def test_scaling_down_removes_the_newest_and_reconfigures(demo: CloudCLI, tmp_path: Path) -> None:
    ips = _ips(demo)
    smaller = tmp_path / "smaller.yaml"
    smaller.write_text(EXAMPLE.read_text().replace("    count: 2", "    count: 1"))
    assert "- instance web-2" in demo.run("stack", "plan", str(smaller)).stdout
    demo.run("stack", "apply", str(smaller), "--wait", timeout=120)
    _eventually(lambda: "web-2" not in _ips(demo), "web-2 removed")
    want = f"web={ips['web-1']}\n"
    _eventually(lambda: demo.run("exec", "db-1", "--", "cat", "/tmp/configure").stdout == want, "db reconfigured")


def test_delete_removes_everything(demo: CloudCLI) -> None:
    demo.run("stack", "delete", "demo", "--wait", timeout=200)
    assert demo.json("list") == [] and demo.json("stack", "list") == []
    assert "demo-net" not in [n["name"] for n in demo.json("network", "list")]
    assert demo.json("volume", "list") == []


def _fronted(cloud: CloudCLI, tmp_path: Path) -> Path:
    """A stack of two web members behind an LB; deploy makes a member answer 500 for 2 s, as an app that
    restarts would, so only a member the LB drained first keeps every request succeeding."""
    text = f"""\
name: shop
layers:
  app:
    count: 2
    memory: 32
    cpus: 0.2
    command: {json.dumps(APP)}
    hooks:
      deploy: touch /tmp/fail && sleep 2 && rm /tmp/fail && echo deployed >> /tmp/deploys
load_balancers:
  front: {{layer: app, port: 80, health_check: "http:/health"}}
"""
    path = tmp_path / "shop.yaml"
    path.write_text(text)
    return path


def test_rolling_deploy_behind_a_load_balancer_fails_no_request(demo: CloudCLI, tmp_path: Path) -> None:
    shop = _fronted(demo, tmp_path)
    demo.run("stack", "apply", str(shop), "--wait", timeout=180)
    lb = demo.json("lb", "show", "shop-front")
    hub = f"cl-{demo.cloud_id()}-hub"

    def both_up() -> bool:
        view = demo.json("lb", "show", "shop-front")
        return sorted(m["name"] for m in view["member_status"] if m["state"] == "up") == ["app-1", "app-2"]

    _eventually(both_up, "both members up in the LB", timeout=30)
    # each member joined the LB drained and was put in service only once its setup and deploy had run
    events = [e["message"] for e in demo.json("events", "shop-front")]  # oldest first
    for name in ("app-1", "app-2"):
        drained, back = events.index(f"member {name} drained"), events.index(f"member {name} back in service")
        assert drained < back, events
    with Load(hub, lb["ip"]) as load:
        time.sleep(1)
        out = demo.run("stack", "deploy", "shop", "--layer", "app", "--batch", "1", timeout=180).stdout
        time.sleep(1)
    assert out.splitlines()[:2] == ["app-1: deploy exit 0", "app-2: deploy exit 0"], out
    for name in ("app-1", "app-2"):
        assert demo.run("exec", name, "--", "cat", "/tmp/deploys").stdout == "deployed\ndeployed\n"
    print(f"rolling deploy behind the LB: {load.total} requests, {len(load.failures)} failed")
    assert load.total > 20 and set(load.seen) == {"app-1", "app-2"}, (load.total, load.seen)
    if load.failures:  # what the stack and its LB recorded tells whether the drain was confirmed, and when
        events = [e for n in ("shop", "shop-front") for e in demo.json("events", n)]
        history = [f"{e['time']:.2f} {e['reason']}: {e['message']}" for e in sorted(events, key=lambda e: e["time"])]
        raise AssertionError(f"{len(load.failures)} failed, first {load.failures[:3]}; events: {history}")
    # the control: the same deploy hook run without draining fails requests (so the test can fail)
    with Load(hub, lb["ip"]) as load:
        demo.run("exec", "-l", "cloudlet.io/stack=shop", "--", "sh", "-c", "touch /tmp/fail && sleep 2 && rm /tmp/fail")
    assert load.failures, "requests to members that were not drained should have failed"
    # browsing-only mode through the stack: its LB refuses writes, still serves reads
    demo.run("stack", "readonly", "shop", "on")

    def post_refused() -> bool:
        status, body = in_netns(hub, lambda: request(lb["ip"], "POST"))
        return status == 503 and "read-only" in body

    _eventually(post_refused, "POST answered 503 read-only", timeout=15)
    assert in_netns(hub, lambda: request(lb["ip"]))[0] == 200
    demo.run("stack", "readonly", "shop", "off")
    _eventually(lambda: in_netns(hub, lambda: request(lb["ip"], "POST"))[0] == 200, "POST served again", timeout=15)
    demo.run("stack", "delete", "shop", "--wait", timeout=180)
    assert "shop-front" not in [lb["name"] for lb in demo.json("lb", "list")]
