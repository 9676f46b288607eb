"""Volumes, snapshots, clones, pool usage and garbage collection."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict

from cloudlet.api.deps import NamePath, caller, get_cloud, page
from cloudlet.api.routes.hosts import host_names
from cloudlet.api.routes.labels import label_selector
from cloudlet.core.context import Caller, Cloud
from cloudlet.core.errors import CloudletError
from cloudlet.core.labels import Labels, Selector
from cloudlet.core.records import Name, NameRef
from cloudlet.storage import backups, endpoints, policies, replication, volumes

router = APIRouter(prefix="/v1", tags=["storage"])
Cascade = Query(False, description="also delete everything that depends on it")


class CloneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: Labels = {}
    snapshot: NameRef
    name: Name


@router.get("/volumes")
def list_volumes(
    cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller), sel: Selector = Depends(label_selector)
) -> dict[str, Any]:
    return page(
        [volumes.volume_view(r) for r in cloud.store.list(volumes.VOLUME, tenant=who.tenant) if sel.matches(r.labels)]
    )


@router.post("/volumes", status_code=202)
def create_volume(
    body: volumes.VolumeCreate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return volumes.volume_view(volumes.create_volume(cloud, who, body))


@router.post("/volumes/clone", status_code=202)
def clone_volume(
    body: CloneRequest, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return volumes.volume_view(volumes.clone_volume(cloud, who, body.snapshot, body.name, body.labels))


@router.post("/volumes/{name}/attach", status_code=202)
def attach(
    name: NamePath, body: volumes.AttachRequest, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return volumes.volume_view(volumes.attach_volume(cloud, who, name, body))


@router.post("/volumes/{name}/detach", status_code=202)
def detach(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    return volumes.volume_view(volumes.detach_volume(cloud, who, name))


@router.get("/volumes/{name}")
def show_volume(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    res = cloud.store.get(volumes.VOLUME, who.tenant, name)
    view = {**volumes.volume_view(res), "dependents": [d.name for d in volumes.dependents(cloud, res)]}
    view["replica"] = replication.replica_view(replication.replica_of(cloud.store, res.id))
    if res.phase == "ready" and res.host:
        try:
            view.update(cloud.hosts.agent(res.host).volume_usage(res.id))
        except CloudletError as exc:  # the record is still worth showing
            view["usage_error"] = exc.message
    return view


@router.delete("/volumes/{name}", status_code=202)
def delete_volume(
    name: NamePath, cascade: bool = Cascade, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return page([{"kind": r.kind, "name": r.name} for r in volumes.delete_volume(cloud, who, name, cascade)])


@router.get("/snapshots")
def list_snapshots(
    cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller), sel: Selector = Depends(label_selector)
) -> dict[str, Any]:
    return page(
        [
            volumes.snapshot_view(r)
            for r in cloud.store.list(volumes.SNAPSHOT, tenant=who.tenant)
            if sel.matches(r.labels)
        ]
    )


@router.post("/snapshots", status_code=202)
def create_snapshot(
    body: volumes.SnapshotCreate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return volumes.snapshot_view(volumes.create_snapshot(cloud, who, body))


@router.get("/snapshots/{name}")
def show_snapshot(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    res = cloud.store.get(volumes.SNAPSHOT, who.tenant, name)
    return {**volumes.snapshot_view(res), "dependents": [d.name for d in volumes.dependents(cloud, res)]}


@router.delete("/snapshots/{name}", status_code=202)
def delete_snapshot(
    name: NamePath, cascade: bool = Cascade, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return page([{"kind": r.kind, "name": r.name} for r in volumes.delete_snapshot(cloud, who, name, cascade)])


@router.get("/storage/usage")
def storage_usage(cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    reports = [cloud.hosts.agent(h).storage_report() for h in host_names(cloud)]
    report: dict[str, Any] = {
        "pool": ",".join(sorted({r["pool"] for r in reports})),
        "volumes": [v for r in reports for v in r["volumes"]],
        "logical_bytes": sum(r["logical_bytes"] for r in reports),
        "physical_bytes": sum(r["physical_bytes"] for r in reports),
        "tenants": _tenant_totals(reports),
    }
    if not who.is_admin:
        report["volumes"] = [v for v in report["volumes"] if v["tenant"] == who.tenant]
        report["tenants"] = [t for t in report["tenants"] if t["tenant"] == who.tenant]
    return report


@router.get("/storage/gc")
def gc_check(cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    who.require_admin("storage gc")
    return page([g for h in host_names(cloud) for g in cloud.hosts.agent(h).garbage(collect=False)])


@router.post("/storage/gc")
def gc_collect(cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    who.require_admin("storage gc")
    return page([g for h in host_names(cloud) for g in cloud.hosts.agent(h).garbage(collect=True)])


@router.get("/backup-targets")
def list_targets(
    cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller), sel: Selector = Depends(label_selector)
) -> dict[str, Any]:
    return page(
        [backups.target_view(r) for r in cloud.store.list(backups.TARGET, tenant=who.tenant) if sel.matches(r.labels)]
    )


@router.post("/backup-targets", status_code=201)
def add_target(
    body: backups.TargetCreate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return backups.target_view(backups.add_target(cloud, who, body))


@router.get("/backup-endpoints")
def list_endpoints(
    url: str | None = Query(None, max_length=300, description="only the entry for this endpoint URL"),
    cloud: Cloud = Depends(get_cloud),
) -> dict[str, Any]:
    """The endpoints tenants' backup targets may use (the admin's may point anywhere)."""
    found = [endpoints.find_endpoint(cloud, url)] if url else cloud.store.list(endpoints.ENDPOINT)
    return page([endpoints.endpoint_view(r) for r in found if r is not None])


@router.post("/backup-endpoints", status_code=201)
def allow_endpoint(
    body: endpoints.EndpointCreate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    """Admin: lets tenants' targets use this endpoint (again); with `private`, also at non-public addresses."""
    return endpoints.endpoint_view(endpoints.allow_endpoint(cloud, who, body))


@router.delete("/backup-endpoints/{name}")
def remove_endpoint(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """Admin: tenants' targets at this endpoint are refused from then on."""
    return endpoints.endpoint_view(endpoints.remove_endpoint(cloud, who, name))


@router.get("/backups")
def list_backups(
    cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller), sel: Selector = Depends(label_selector)
) -> dict[str, Any]:
    return page(
        [backups.backup_view(r) for r in cloud.store.list(backups.BACKUP, tenant=who.tenant) if sel.matches(r.labels)]
    )


@router.post("/backups", status_code=202)
def create_backup(
    body: backups.BackupCreate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return backups.backup_view(backups.create_backup(cloud, who, body))


@router.get("/backups/{name}")
def show_backup(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    return backups.backup_view(cloud.store.get(backups.BACKUP, who.tenant, name))


@router.post("/backups/{name}/restore", status_code=202)
def restore_backup(
    name: NamePath, body: backups.RestoreRequest, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    res = backups.restore_backup(cloud, who, name, body)
    return volumes.volume_view(res) if res.kind == volumes.VOLUME else volumes.snapshot_view(res)


@router.delete("/backups/{name}", status_code=202)
def delete_backup(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    return backups.backup_view(backups.delete_backup(cloud, who, name))


@router.get("/backup-policies")
def list_policies(
    cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller), sel: Selector = Depends(label_selector)
) -> dict[str, Any]:
    return page(
        [policies.policy_view(r) for r in cloud.store.list(policies.POLICY, tenant=who.tenant) if sel.matches(r.labels)]
    )


@router.post("/backup-policies", status_code=201)
def create_policy(
    body: policies.PolicyCreate, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)
) -> dict[str, Any]:
    return policies.policy_view(policies.create_policy(cloud, who, body))


@router.get("/backup-policies/{name}")
def show_policy(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    return policies.policy_view(cloud.store.get(policies.POLICY, who.tenant, name))


@router.post("/backup-policies/{name}/verify", status_code=202)
def verify_policy(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    """Restores, boots and checks the newest finished backup of each of the policy's sources now, in the
    background; the policy's `last_verify` says how it went. 409 while one is going on, or with no backup yet."""
    return policies.policy_view(policies.verify_now(cloud, who, name))


@router.delete("/backup-policies/{name}", status_code=202)
def delete_policy(name: NamePath, cloud: Cloud = Depends(get_cloud), who: Caller = Depends(caller)) -> dict[str, Any]:
    res = cloud.store.get(policies.POLICY, who.tenant, name)
    return policies.policy_view(res if res.deleting else cloud.store.mark_deleted(res.id))


def _tenant_totals(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    totals: dict[str, dict[str, Any]] = {}
    for report in reports:
        for t in report["tenants"]:
            row = totals.setdefault(t["tenant"], {"tenant": t["tenant"], "logical_bytes": 0, "exclusive_bytes": 0})
            row["logical_bytes"] += t["logical_bytes"]
            row["exclusive_bytes"] += t["exclusive_bytes"]
    return sorted(totals.values(), key=lambda t: str(t["tenant"]))
