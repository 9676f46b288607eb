"""Repair, run by each host's agent: match the host's real artefacts to records. Orphans are artefacts with no live record; missing are records
whose artefacts vanished. `check` only reports; `fix` removes orphans and requeues records with missing parts.
"""

from __future__ import annotations

__all__ = ["Finding", "scan", "fix"]

from dataclasses import asdict, dataclass

from cloudlet.compute.drivers.base import InstanceState
from cloudlet.compute.resource import INSTANCE, InstanceSpec, InstanceStatus
from cloudlet.core.context import HostContext
from cloudlet.lb.resource import LOADBALANCER
from cloudlet.network.resource import NETWORK
from cloudlet.storage.names import disk_of


@dataclass(frozen=True)
class Finding:
    problem: str  # "orphan" | "missing"
    kind: str
    id: str
    name: str
    artefact: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def scan(cloud: HostContext) -> list[Finding]:
    store, compute, net = cloud.store, cloud.compute, cloud.net
    found: list[Finding] = []
    instances = {r.id: r for r in store.list(INSTANCE, host=cloud.host)}
    for iid in sorted(compute.list_instances() - instances.keys()):
        found.append(Finding("orphan", INSTANCE, iid, "", "container", "container files with no instance record"))
    lbs = {r.id for r in store.list(LOADBALANCER, host=cloud.host)}  # an LB's netns is a port too
    for iid in sorted(net.list_ports() - instances.keys() - lbs):
        found.append(Finding("orphan", INSTANCE, iid, "", "netns", "network namespace with no instance record"))
    for iid in sorted({d.removeprefix(disk_of("")) for d in cloud.pool.list(disk_of(""))} - instances.keys()):
        found.append(Finding("orphan", INSTANCE, iid, "", "disk", "root disk with no instance record"))
    for res in instances.values():
        status = InstanceStatus.of(res)
        if res.deleting or InstanceSpec.of(res).state != "running" or status.state == "exited":
            continue
        if status.run_nonce is None:
            continue  # never started yet: not missing, just pending
        info = compute.get_instance(res.id)
        if info.state == InstanceState.MISSING:
            found.append(Finding("missing", INSTANCE, res.id, res.name, "container", "instance has no container"))
        elif info.state not in (InstanceState.RUNNING, InstanceState.STARTING):
            found.append(Finding("missing", INSTANCE, res.id, res.name, "process", "instance is not running"))
        if not net.port_exists(res.id):
            found.append(Finding("missing", INSTANCE, res.id, res.name, "netns", "instance has no network namespace"))
    nets = {r.id[-10:]: r for r in store.list(NETWORK)}
    bridges = net.list_networks()
    for short in sorted(bridges - nets.keys()):
        found.append(Finding("orphan", NETWORK, short, "", "bridge", "bridge with no network record"))
    for short, res in nets.items():
        if not res.deleting and res.phase == "ready" and short not in bridges:
            found.append(Finding("missing", NETWORK, res.id, res.name, "bridge", "network has no bridge"))
    return found


def fix(cloud: HostContext, findings: list[Finding]) -> list[str]:
    done: list[str] = []
    for f in findings:
        if f.problem == "orphan" and f.kind == INSTANCE:
            cloud.compute.delete_instance(f.id)
            cloud.net.delete_port(f.id)
            cloud.pool.delete(disk_of(f.id))
            done.append(f"removed orphan {f.artefact} of instance {f.id}")
        elif f.problem == "orphan" and f.kind == NETWORK:
            cloud.net.delete_network(f.id)
            done.append(f"removed orphan bridge br{f.id}")
        else:
            cloud.manager.enqueue(f.kind, f.id)
            done.append(f"requeued {f.kind.lower()} {f.name} to recreate its {f.artefact}")
    return done
