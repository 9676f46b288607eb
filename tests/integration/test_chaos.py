"""Chaos experiments against a real cloud (busybox instances): `cloudlet chaos run` passing (exit 0), deviating
(exit 1), aborted by a safeguard (rollbacks ran), --dry (nothing touched); the real `chaostoolkit` CLI calling
cloudlet.chaos.actions.kill_instance; and each fault's kernel object seen from outside cloudlet (the frozen
cgroup, the CPU quota, the nft table and tbf qdisc in the instance's namespace), then gone after its undo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, CloudCLI

pytestmark = pytest.mark.root

CHAOS = ROOT / ".venv" / "bin" / "chaos"
SERVE = "mkdir -p /w && echo ok > /w/index.html && httpd -p 8080 -h /w; exec sleep 1000000"
WEB = {"kind": "instance", "labels": {"role": "web"}, "state": "running", "pick": "COUNT(1)"}


def _action(func: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "python", "module": "cloudlet.chaos.actions", "func": func, "arguments": arguments}


def _probe(func: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "python", "module": "cloudlet.chaos.probes", "func": func, "arguments": arguments}


def _running(name: str) -> dict[str, Any]:
    return {
        "type": "probe",
        "name": f"{name}-running",
        "provider": _probe("instance_state", name=name),
        "tolerance": "running",
    }


@pytest.fixture(scope="module")
def web(cloud: CloudCLI) -> CloudCLI:
    for name, restart in (("web-1", "always"), ("web-2", "always"), ("solo", "never")):
        cloud.run(
            "launch",
            "busybox",
            name,
            "--command",
            SERVE,
            "--memory",
            "32",
            "--restart",
            restart,
            "--label",
            "role=web" if name.startswith("web") else "role=solo",
        )
    for name in ("web-1", "web-2", "solo"):
        cloud.wait_state(name, "running")
    return cloud


@pytest.fixture
def env(web: CloudCLI, monkeypatch: pytest.MonkeyPatch) -> Iterator[CloudCLI]:
    """The actions and probes, called in this process, find the test's cloud as the CLI does."""
    monkeypatch.setenv("CLOUDLET_HOME", str(web.home))
    yield web


def _run(cloud: CloudCLI, tmp: Path, doc: dict[str, Any], *args: str) -> tuple[int, dict[str, Any], str]:
    exp, journal = tmp / "exp.json", tmp / "journal.json"
    exp.write_text(json.dumps(doc))
    proc = cloud.run("chaos", "run", str(exp), "--journal", str(journal), *args, check=False, timeout=120)
    assert journal.exists(), proc.stderr
    return proc.returncode, json.loads(journal.read_text()), proc.stdout + proc.stderr


def _quota(cloud: CloudCLI, name: str) -> int:
    iid = cloud.json("show", name)["id"]
    return int(Path(f"/sys/fs/cgroup/cpu/cloudlet-{cloud.cloud_id()}/{iid}/cpu.cfs_quota_us").read_text())


def test_passing_experiment_throttles_and_restores(web: CloudCLI, tmp_path: Path) -> None:
    doc = {
        "title": "a throttled web server keeps serving",
        "steady-state-hypothesis": {
            "title": "both web servers run",
            "probes": [
                {
                    "type": "probe",
                    "name": "web-count",
                    "provider": _probe("running_count", selector={**WEB, "pick": "ALL"}),
                    "tolerance": 2,
                }
            ],
        },
        "method": [
            {"type": "action", "name": "throttle", "provider": _action("throttle_cpu", selector=WEB, percent=20)},
            {
                "type": "probe",
                "name": "quota",
                "provider": {
                    "type": "process",
                    "path": "sh",
                    "arguments": ["-c", f"cat /sys/fs/cgroup/cpu/cloudlet-{web.cloud_id()}/*/cpu.cfs_quota_us"],
                },
            },
        ],
        "rollbacks": [{"type": "action", "name": "restore", "provider": _action("restore_cpu", selector=WEB)}],
    }
    rc, j, out = _run(web, tmp_path, doc, "--seed", "7")
    assert rc == 0, out
    assert (j["status"], j["deviated"]) == ("completed", False)
    assert j["steady_states"]["before"]["steady_state_met"] and j["steady_states"]["after"]["steady_state_met"]
    (target,) = [names for key, names in j["cloudlet"]["targets"].items() if "COUNT(1)" in key]
    assert len(target) == 1 and target[0] in ("web-1", "web-2") and j["cloudlet"]["seed"] == 7
    assert "20000" in j["run"][1]["output"]["stdout"].split()  # the quota really was 20% of a core
    assert [r["status"] for r in j["rollbacks"]] == ["succeeded"]
    assert _quota(web, target[0]) == 100000  # and is back to the spec's one CPU
    # the same seed picks the same target
    assert _run(web, tmp_path, doc, "--seed", "7")[1]["cloudlet"]["targets"] == j["cloudlet"]["targets"]


def test_deviating_experiment_exits_1_and_rolls_back(web: CloudCLI, tmp_path: Path) -> None:
    pid = web.json("show", "solo")["pid"]
    doc = {
        "title": "a killed server with restart never stays down",
        "steady-state-hypothesis": {"title": "solo runs", "probes": [_running("solo")]},
        "method": [
            {
                "type": "action",
                "name": "kill",
                "provider": _action("kill_instance", name="solo"),
                "pauses": {"after": 1},
            }
        ],
        "rollbacks": [{"type": "action", "name": "start", "provider": _action("start_instance", name="solo")}],
    }
    rc, j, out = _run(web, tmp_path, doc)
    assert rc == 1, out
    assert (j["status"], j["deviated"]) == ("completed", True)
    assert f"pid {pid}" in j["run"][0]["output"][0]["detail"]
    assert j["steady_states"]["after"]["probes"][0]["output"] != "running"
    assert j["rollbacks"][0]["output"] == [{"instance": "solo", "state": "running"}]
    assert web.json("show", "solo")["pid"] != pid
    assert any(e["reason"] == "ChaosFault" for e in web.json("events", "solo"))


def test_safeguard_aborts_within_a_period_then_rolls_back(web: CloudCLI, tmp_path: Path) -> None:
    doc = {
        "title": "stop as soon as solo is down",
        "controls": [
            {
                "name": "safeguard",
                "provider": {
                    "type": "python",
                    "module": "chaosaddons.controls.safeguards",
                    "arguments": {"probes": [{**_running("solo"), "name": "solo-up", "frequency": 0.5}]},
                },
            }
        ],
        "method": [
            {"type": "action", "name": "kill", "provider": _action("kill_instance", name="solo")},
            {"type": "action", "name": "long", "provider": {"type": "process", "path": "sleep", "arguments": ["60"]}},
        ],
        "rollbacks": [{"type": "action", "name": "start", "provider": _action("start_instance", name="solo")}],
    }
    t0 = time.monotonic()
    rc, j, out = _run(web, tmp_path, doc)
    took = time.monotonic() - t0
    assert rc == 1, out
    assert j["status"] == "aborted" and j["cloudlet"]["aborted_by"] == "solo-up"
    assert took < 50, f"the safeguard took {took:.1f} s to stop a 60 s method"
    assert [r["activity"]["name"] for r in j["run"]] == ["kill", "long"] and j["run"][1]["status"] == "failed"
    assert any(not r["tolerance_met"] for r in j["steady_states"]["during"])
    assert j["rollbacks"][0]["status"] == "succeeded"
    assert web.json("show", "solo")["state"] == "running"


def test_dry_run_touches_nothing(web: CloudCLI, tmp_path: Path) -> None:
    before = {n: web.json("show", n)["pid"] for n in ("web-1", "web-2")}
    doc = {
        "title": "dry",
        "steady-state-hypothesis": {"title": "web-1 runs", "probes": [_running("web-1")]},
        "method": [
            {"type": "action", "name": "kill", "provider": _action("kill_instance", selector={**WEB, "pick": "ALL"})}
        ],
    }
    rc, j, out = _run(web, tmp_path, doc, "--dry")
    assert rc == 0, out
    assert j["cloudlet"]["dry"] and j["run"][0]["output"] is None and j["run"][0]["status"] == "succeeded"
    assert sorted(next(iter(j["cloudlet"]["targets"].values()))) == ["web-1", "web-2"]
    time.sleep(0.5)
    assert {n: web.json("show", n)["pid"] for n in ("web-1", "web-2")} == before


def test_bad_file_exits_2_naming_the_key(web: CloudCLI, tmp_path: Path) -> None:
    doc = {"title": "bad", "method": [{"type": "action", "name": "x", "provider": {"type": "python", "func": "f"}}]}
    exp = tmp_path / "bad.json"
    exp.write_text(json.dumps(doc))
    proc = web.run("chaos", "run", str(exp), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"Error: {exp}: method[0].provider.module: missing; add it"]


def _install_chaostoolkit() -> None:
    """`make install` brings it (pyproject's test extras); a .venv made before it gets the same pins here."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    pins = [p for p in extras if p.startswith("chaostoolkit")]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *pins], check=True, capture_output=True, timeout=300)


def test_chaostoolkit_cli_kills_an_instance(web: CloudCLI, tmp_path: Path) -> None:
    if not CHAOS.exists():
        _install_chaostoolkit()
    pid = web.json("show", "web-1")["pid"]
    doc = {
        "title": "kill web-1 through chaostoolkit",
        "description": "cloudlet's actions from the chaostoolkit CLI",
        "steady-state-hypothesis": {"title": "web-2 runs", "probes": [_running("web-2")]},
        "method": [{"type": "action", "name": "kill-web-1", "provider": _action("kill_instance", name="web-1")}],
    }
    exp, journal = tmp_path / "ctk.json", tmp_path / "ctk-journal.json"
    exp.write_text(json.dumps(doc))
    proc = subprocess.run(
        [
            str(CHAOS),
            "--no-version-check",
            "--no-log-file",
            "--settings",
            str(tmp_path / "settings.yaml"),
            "run",
            "--journal-path",
            str(journal),
            str(exp),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**web.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    j = json.loads(journal.read_text())
    assert (j["status"], j["deviated"]) == ("completed", False)
    (run,) = j["run"]
    assert run["status"] == "succeeded" and f"SIGKILL to init (pid {pid})" in run["output"][0]["detail"]
    _restarted(web, "web-1", pid)  # its restart policy brings it back


def _in_netns(pid: int, *argv: str) -> str:
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", *argv], capture_output=True, text=True).stdout


def _gone(pid: int) -> bool:
    """No such process, or a zombie (dead, its parent not having reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_faults_are_real_and_undone(env: CloudCLI) -> None:
    from cloudlet.chaos import actions
    from cloudlet.core.errors import NotSupported

    view = env.json("show", "web-2")
    pid, iid = view["pid"], view["id"]
    freezer = Path(f"/sys/fs/cgroup/freezer/cloudlet-{env.cloud_id()}/{iid}/freezer.state")
    actions.pause_instance(name="web-2")
    assert freezer.read_text().strip() == "FROZEN"
    actions.resume_instance(name="web-2")
    assert freezer.read_text().strip() == "THAWED"

    actions.drop_packets(name="web-2", percent=50)
    assert "numgen random mod 100 < 50" in _in_netns(pid, "nft", "list", "table", "inet", "cl_chaos")
    actions.partition_instance(name="web-2")
    table = _in_netns(pid, "nft", "list", "table", "inet", "cl_chaos")
    assert "numgen" not in table and "drop" in table
    actions.heal_instance(name="web-2")
    assert "cl_chaos" not in _in_netns(pid, "nft", "list", "tables")

    actions.limit_bandwidth(name="web-2", rate_kbit=800)
    assert "tbf" in _in_netns(pid, "tc", "qdisc", "show", "dev", "eth0")
    with pytest.raises(NotSupported, match="sch_netem.*throttle_cpu"):
        actions.add_latency(name="web-2", delay_ms=50)
    actions.unshape_instance(name="web-2")
    assert "tbf" not in _in_netns(pid, "tc", "qdisc", "show", "dev", "eth0")
    assert env.json("show", "web-2")["pid"] == pid  # none of it restarted the instance
    # faults left in place go with the instance: a frozen, throttled, partitioned one still stops, entirely
    actions.throttle_cpu(name="web-2", percent=5)
    actions.partition_instance(name="web-2")
    actions.pause_instance(name="web-2")
    env.run("stop", "web-2", "--wait", timeout=60)
    assert _gone(pid), Path(f"/proc/{pid}/status").read_text()
    assert env.runc("list").stdout.count("cl-" + iid) == 0
    env.run("start", "web-2", "--wait")
    assert _quota(env, "web-2") == 100000 and freezer.read_text().strip() == "THAWED"


def test_operator_actions_need_root_and_admin(env: CloudCLI, monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudlet.chaos import actions
    from cloudlet.core.errors import Forbidden, NotSupported

    with pytest.raises(NotSupported, match="root namespace"):
        actions.kill_host("local")
    token = env.run("tenant", "create", "chaos-t").stdout.strip().splitlines()[-1]
    monkeypatch.setenv("CLOUDLET_TOKEN", token)
    with pytest.raises(Forbidden, match="admin token"):
        actions.kill_control_plane()
    assert Path(f"/proc/{env.daemon_pid()}").exists()


def test_fill_volume_writes_from_inside_and_cleans_up(env: CloudCLI) -> None:
    from cloudlet.chaos import actions

    env.run("volume", "create", "chaos-vol", "--size", "1")
    env.run("volume", "attach", "chaos-vol", "web-1", "--path", "/data")
    deadline = time.monotonic() + 30
    while not env.json("volume", "show", "chaos-vol")["attached"] and time.monotonic() < deadline:
        time.sleep(0.2)
    done = actions.fill_volume("chaos-vol", percent=2, max_mib=8)
    assert (done["instance"], done["written_mib"]) == ("web-1", 8)  # 2% of 1 GiB is 21 MiB: bounded by max_mib
    listing = env.run("exec", "web-1", "--", "sh", "-c", "du -m /data/.cloudlet-chaos-fill-*").stdout
    assert listing.split()[0] == "8", listing
    actions.clean_volume("chaos-vol")
    assert env.run("exec", "web-1", "--", "sh", "-c", "ls -A /data").stdout.strip() == ""
    env.run("volume", "detach", "chaos-vol")
    env.run("volume", "delete", "chaos-vol")


def _restarted(cloud: CloudCLI, name: str, old_pid: int) -> None:
    """Running again as a new process (the record may still show the old one for a moment after a kill)."""
    deadline = time.monotonic() + 30
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = cloud.json("show", name)
        if view["state"] == "running" and view["pid"] not in (None, old_pid):
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} did not run again as a new process: {view}")


STACK = """\
name: cw
layers:
  app:
    count: 2
    memory: 32
    cpus: 0.2
    command: {app}
load_balancers:
  front: {{layer: app, port: 80, health_check: "http:/health"}}
eips:
  public: {{load_balancer: front}}
"""


def test_the_example_experiment_holds_on_a_load_balanced_stack(env: CloudCLI, tmp_path: Path) -> None:
    """examples/chaos/shop-kill-web.json, pointed at a busybox stack of the same shape (2 app instances behind an
    LB holding an EIP): one web instance killed under load, the LB keeps answering 200."""
    from cloudlet.chaos import actions, probes
    from tests.integration.test_lb import APP

    (tmp_path / "cw.yaml").write_text(STACK.format(app=json.dumps(APP)))
    env.run("stack", "apply", str(tmp_path / "cw.yaml"), "--wait", timeout=180)
    eip = env.json("eip", "show", "cw-public")["address"]
    deadline = time.monotonic() + 60
    while probes.lb_up_count("cw-front") < 2 or probes.http_status(eip, path="/health")["status"] != 200:
        assert time.monotonic() < deadline, (probes.lb_member_states("cw-front"), probes.http_status(eip))
        time.sleep(0.3)
    pids = {n: env.json("show", n)["pid"] for n in ("app-1", "app-2")}
    args = ["--var", f"eip={eip}", "--var", "stack=cw", "--var", "layer=app", "--var", "lb=cw-front"]
    args += ["--var", "load_seconds=8"]
    exp = ROOT / "examples" / "chaos" / "shop-kill-web.json"
    journal = tmp_path / "journal.json"
    proc = env.run("chaos", "run", str(exp), "--journal", str(journal), "--seed", "3", *args, check=False, timeout=120)
    j = json.loads(journal.read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (j["status"], j["deviated"]) == ("completed", False)
    (killed,) = [names[0] for key, names in j["cloudlet"]["targets"].items() if "COUNT(1)" in key]
    assert killed in pids
    load = next(r for r in j["run"] if r["activity"]["name"] == "load")["output"]
    print(f"example experiment: killed {killed}; load {load}")
    assert load["requests"] > 20 and load["error_rate"] <= 0.05, load
    assert all(r["tolerance_met"] for r in j["steady_states"]["during"])
    _restarted(env, killed, pids[killed])
    # the LB member actions and the stack probe
    assert probes.stack_healthy_count("cw", "app") == 2
    actions.stop_lb_member("cw-front", "app-1")
    _until("app-1 drained", lambda: probes.lb_member_states("cw-front").get("app-1") in ("drain", "maint"))
    bodies = [probes.http_status(eip, path="/cgi-bin/app")["body"] for _ in range(6)]
    assert all("app-2" in b and "app-1" not in b for b in bodies), bodies
    actions.start_lb_member("cw-front", "app-1")
    _until("app-1 back", lambda: probes.lb_member_states("cw-front").get("app-1") == "up")
    # the monkey on the same stack: app-1 opted out, so a round kills app-2, as an event on it
    env.run("label", "instance", "app-1", "cloudlet.io/chaos=off")
    for name in ("app-1", "app-2"):
        env.wait_state(name, "running")
    pids = {n: env.json("show", n)["pid"] for n in ("app-1", "app-2")}
    out = env.run("chaos", "monkey", "cw", "--interval", "1", "--rounds", "1", "--seed", "1").stdout
    assert "cw/app: killed app-2: SIGKILL to init" in out, out
    _restarted(env, "app-2", pids["app-2"])
    assert env.json("show", "app-1")["pid"] == pids["app-1"]
    assert any(e["reason"] == "ChaosFault" for e in env.json("events", "app-2"))
    env.run("stack", "delete", "cw", "--wait", timeout=180)


def _until(what: str, check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.2)


def test_operator_faults_on_a_host_and_the_control_plane(env: CloudCLI) -> None:
    from cloudlet.chaos import actions
    from cloudlet.network.underlay import Underlay

    env.run("host", "add", "h2", "--zone", "zone-b")
    agent = env.agent_pid("h2")
    assert actions.kill_host("h2")["killed"] >= 1 and _gone(agent)
    actions.start_host("h2")
    assert env.agent_pid("h2") != agent and not _gone(env.agent_pid("h2"))
    _until("h2 up again", lambda: env.json("host", "show", "h2")["state"] == "up")

    underlay = ["ip", "netns", "exec", Underlay(env.cloud_id(), env.home).netns, "nft", "list", "ruleset"]
    actions.partition_host("h2")
    assert "drop" in subprocess.run(underlay, capture_output=True, text=True).stdout
    actions.heal_host("h2")
    assert "drop" not in subprocess.run(underlay, capture_output=True, text=True).stdout
    own = ["ip", "netns", "exec", f"cl-{env.cloud_id()}-h-h2", "nft", "list", "tables"]
    actions.drop_host_packets("h2", percent=50)
    assert "cl_chaos" in subprocess.run(own, capture_output=True, text=True).stdout
    actions.heal_host("h2")
    assert "cl_chaos" not in subprocess.run(own, capture_output=True, text=True).stdout

    daemon, web1 = env.daemon_pid(), env.json("show", "web-1")["pid"]
    assert actions.kill_control_plane()["killed"] == daemon and _gone(daemon)
    assert "unreachable" in env.run("show", "web-1", check=False).stderr
    assert not _gone(web1)  # instances run on without the control plane
    actions.start_control_plane()
    assert env.json("show", "web-1")["pid"] == web1
    env.run("host", "remove", "h2", "--force")
