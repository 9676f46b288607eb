"""Instance kind: spec, service functions for the API, and the reconciler that makes instances real.

The API's service functions are here. Spec says what the user wants (image, network, size, restart policy, running or stopped, a run nonce that
start/restart bump). Status says what is: state, ip, pid, placement, restarts. Two reconcilers share the kind:
the control plane's scheduler (compute/scheduler.py) places an instance and gives it an address; the agent of
the host it landed on (compute/runtime.py) makes it real and keeps it so.
"""

from __future__ import annotations

__all__ = [
    "KIND",
    "READY",
    "InstanceCreate",
    "InstanceAction",
    "ExecRequest",
    "launch",
    "instance_view",
    "act",
    "delete_instance",
    "exec_in",
    "set_state",
]

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloudlet.compute import idmap
from cloudlet.compute.images import get_image
from cloudlet.compute.resource import (
    HOST,
    INSTANCE,
    HealthCheck,
    ImageStatus,
    InstanceSpec,
    InstanceStatus,
)
from cloudlet.compute.seed import USER_DATA_MAX
from cloudlet.core import quota
from cloudlet.core.conditions import set_condition
from cloudlet.core.context import SYSTEM_TENANT, Caller, Cloud, Records
from cloudlet.core.errors import BadRequest, Conflict, InvalidSpec, NotFound, PayloadTooLarge
from cloudlet.core.labels import Labels
from cloudlet.core.records import (
    FINALIZER,
    Int,
    Name,
    NameRef,
    Number,
    Resource,
    Text,
    check_name,
    new_id,
    record_view,
)
from cloudlet.network import networks, secgroups
from cloudlet.storage.resource import SNAPSHOT, SnapshotSpec, VolumeSpec
from cloudlet.storage.volumes import delete_resource, volumes_of_snapshot

KIND = INSTANCE
READY = "Ready"
# the compute quotas (core/quota.py). An instance holds its vCPUs and memory stopped or running (placement keeps
# its memory reserved either way), so stop and start change no usage; one being deleted keeps its address until
# it is gone.
quota.register_meter(quota.Meter("instances", KIND, lambda r: 0 if r.deleting else 1, 20))
quota.register_meter(quota.Meter("vcpus", KIND, lambda r: 0 if r.deleting else InstanceSpec.of(r).cpus, 16))
quota.register_meter(
    quota.Meter("memory_mib", KIND, lambda r: 0 if r.deleting else InstanceSpec.of(r).memory_mib, 16384)
)
quota.register_meter(
    quota.Meter("addresses", KIND, lambda r: 1 if not r.deleting or InstanceStatus.of(r).ip else 0, 256)
)


class InstanceCreate(BaseModel):
    # boots an image or an instance snapshot: the schema says one of them must be given
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": ["image"], "properties": {"image": {"type": "string"}}},
                {"required": ["from_snapshot"], "properties": {"from_snapshot": {"type": "string"}}},
            ]
        },
    )
    labels: Labels = {}
    name: Name
    image: NameRef | None = Field(None, description="image to boot; omit with from_snapshot")
    from_snapshot: NameRef | None = Field(None, description="instance snapshot to boot from instead of an image")
    network: NameRef = networks.DEFAULT
    cpus: Number = Field(1.0, gt=0, le=64)
    memory_mib: Int = Field(256, ge=16, le=1024 * 1024)
    disk_gib: Int = Field(2, ge=1, le=1024, description="root disk size limit (GiB)")
    restart: Literal["always", "never"] = "always"
    net_raw: bool = Field(False, strict=True, description="grant CAP_NET_RAW (raw sockets) inside its own netns")
    secgroups: list[NameRef] = Field(
        default_factory=list,
        max_length=secgroups.MAX_GROUPS,
        description="security groups (names) whose rules let traffic in; none: the tenant's default group",
    )
    command: list[Text] | None = Field(None, max_length=256)
    zone: Text | None = None
    user_data: Text | None = Field(
        None, description=f"script or cloud-config run at boot, at most {USER_DATA_MAX} bytes (UTF-8)"
    )
    group: str | None = Field(
        None,
        max_length=100,
        pattern=r"^[a-z0-9][a-z0-9./_-]*$",
        description="placement group (a stack layer's STACK/LAYER): its instances spread over zones, then hosts",
    )
    anti_affinity: Literal["prefer", "hosts"] = Field(
        "prefer", description="prefer: avoid a host holding one of the group while another can; hosts: never"
    )
    replicas: Int = Field(default=0, ge=0, le=1, description="1: ship its root disk to a host in another zone")
    ha: bool = Field(
        False, strict=True, description="HA-managed: started elsewhere when its host fails (stopped by a host cut off)"
    )
    replica_interval_s: Number = Field(
        default=5.0, ge=0.5, le=3600, description="how often its replica is brought up to date"
    )
    health: HealthCheck | None = Field(None, description="probed by its agent from inside the instance")


class InstanceAction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["start", "stop", "restart"]


class ExecRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: list[Text] = Field(min_length=1, max_length=256)
    timeout: Number = Field(60.0, gt=0, le=3600)


def _check_user_data(text: str) -> None:
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape: no file can hold it
        raise BadRequest("user_data is not valid UTF-8 text (it holds a lone surrogate)") from None
    if size > USER_DATA_MAX:
        raise PayloadTooLarge(
            f"user_data: {size} bytes is more than the {USER_DATA_MAX} an instance may have; "
            "fetch the rest from the script instead"
        )


def launch(
    cloud: Cloud, caller: Caller, req: InstanceCreate, owner: str | None = None, rid: str | None = None
) -> Resource:
    """`owner`: the record it belongs to (a stack's instances go with their stack). `rid`: its id, chosen before
    (a volume attached to it before it exists is there when it is placed: storage/verify.py)."""
    check_name("instance", req.name)
    if req.user_data is not None:
        _check_user_data(req.user_data)
    snapshot = None
    if req.from_snapshot:
        snapshot = cloud.store.get(SNAPSHOT, caller.tenant, req.from_snapshot)
        snap_spec = SnapshotSpec.of(snapshot)
        if snap_spec.source_kind != KIND or snapshot.deleting or snap_spec.image_id is None:
            raise Conflict(f"snapshot {req.from_snapshot} is not a bootable instance snapshot")
        found = cloud.store.get_by_id(snap_spec.image_id)
        if found is None:
            raise Conflict(f"the image snapshot {req.from_snapshot} was taken from no longer exists")
        image = found
    elif req.image:
        image = get_image(cloud, caller, req.image)
    else:
        raise InvalidSpec("give an image to launch, or --from-snapshot")
    if image.phase == "failed":
        raise Conflict(f"image {req.image!r} failed to build: {ImageStatus.of(image).message}")
    if req.network == networks.DEFAULT:
        net = networks.ensure_default_network(cloud, caller.tenant)
    else:
        try:
            net = cloud.store.get(networks.KIND, caller.tenant, req.network)
        except NotFound:
            raise NotFound(f"network {req.network!r} not found; create it with 'cloudlet network create'") from None
    if net.deleting:
        raise Conflict(f"network {req.network!r} is being deleted")
    _check_size(cloud, caller, req.cpus, req.memory_mib)
    groups = secgroups.resolve_secgroups(cloud, caller.tenant, req.secgroups)
    spec = InstanceSpec(
        image=image.name,
        image_id=image.id,
        network=net.name,
        network_id=net.id,
        cpus=req.cpus,
        memory_mib=req.memory_mib,
        restart=req.restart,
        command=req.command,
        zone=req.zone,
        from_snapshot_id=snapshot.id if snapshot else None,
        uid_base=idmap.uid_base(cloud, caller.tenant),
        disk_gib=req.disk_gib,
        net_raw=req.net_raw,
        secgroups=groups,
        user_data=req.user_data,
        group=req.group,
        anti_affinity=req.anti_affinity,
        replicas=req.replicas,
        ha=req.ha,
        replica_interval_s=req.replica_interval_s,
        health=req.health,
    )
    res = Resource(
        id=rid or new_id(),
        kind=KIND,
        tenant=caller.tenant,
        name=req.name,
        owner=owner,
        spec=spec.dump(),
        finalizers=[FINALIZER],
        labels=req.labels,
        status=InstanceStatus().dump(),
    )
    if snapshot and cloud.store.list(KIND, tenant=caller.tenant, name=req.name):
        raise Conflict(f"Instance {req.name!r} already exists; choose another name or delete it first")
    # clones of the volumes it had, stored first: its agent sees them before the instance, which waits for them;
    # all in one transaction with the quota check of them all
    vols = volumes_of_snapshot(cloud, caller, snapshot, res.id, req.name) if snapshot else []
    need = {
        "instances": 1,
        "vcpus": req.cpus,
        "memory_mib": req.memory_mib,
        "addresses": 1,
        "volumes": len(vols),
        "volume_gib": sum(VolumeSpec.of(v).size_gib for v in vols),
    }
    cloud.store.create_all(
        [
            *((v, f"volume {v.name} restored for {req.name}") for v in vols),
            (res, f"instance {req.name} of image {image.name} on network {net.name}"),
        ],
        guard=quota.guard(caller.tenant, need),
    )
    return res


def _check_size(cloud: Cloud, caller: Caller, cpus: float, memory_mib: int) -> None:
    """No instance is bigger than the largest host. A tenant's has at most half that host's memory: placement
    reserves memory, so one instance holding all of it would shut every other tenant out of the host (CPU time is
    shared, not reserved)."""
    hosts = [h.spec for h in cloud.store.cached(HOST).list(SYSTEM_TENANT)]  # HostSpec's fields, unparsed: O(hosts)
    most_memory = max((int(h.get("memory_mib", 0)) for h in hosts), default=0)
    most_cpus = max((int(h.get("cpus", 0)) for h in hosts), default=0)
    if memory_mib > most_memory:
        raise Conflict(f"memory {memory_mib} MiB is more than the largest host has ({most_memory} MiB)")
    if not caller.is_admin and memory_mib > most_memory // 2:
        raise Conflict(
            f"memory {memory_mib} MiB is more than a tenant's instance may have: {most_memory // 2} MiB, half of "
            "the largest host"
        )
    if cpus > most_cpus:
        raise Conflict(f"cpus {cpus:g} is more than the largest host has ({most_cpus})")


def act(cloud: Cloud, caller: Caller, name: str, action: str) -> Resource:
    res = cloud.store.get(KIND, caller.tenant, name)
    if res.deleting:
        raise Conflict(f"instance {name} is being deleted")
    spec = InstanceSpec.of(res)
    if action == "stop":
        spec.state = "stopped"
    else:
        spec.state = "running"
        spec.run_nonce += 1
    res = cloud.store.update_spec(res.id, spec.dump())
    cloud.store.add_event(res, action.capitalize() + "Requested", f"{action} requested")
    return res


def delete_instance(cloud: Cloud, caller: Caller, name: str, cascade: bool = False) -> list[Resource]:
    return delete_resource(cloud, cloud.store.get(KIND, caller.tenant, name), cascade)


def exec_in(cloud: Cloud, caller: Caller, name: str, req: ExecRequest) -> dict[str, Any]:
    res = cloud.store.get(KIND, caller.tenant, name)
    if res.host is None or InstanceStatus.of(res).state != "running":
        raise Conflict(f"instance {name} is not running; start it first")
    result: dict[str, Any] = cloud.hosts.agent(res.host).exec_instance(res.id, req.command, req.timeout)
    return result


def instance_view(res: Resource) -> dict[str, Any]:
    spec, st = InstanceSpec.of(res), InstanceStatus.of(res)
    return record_view(
        res,
        state="deleting" if res.deleting else st.state,
        image=spec.image,
        network=spec.network,
        ip=st.ip,
        dns_name=st.dns_name,
        host=res.host,
        zone=res.zone,
        pid=st.pid,
        cpus=spec.cpus,
        memory_mib=spec.memory_mib,
        disk_gib=spec.disk_gib,
        restart=spec.restart,
        net_raw=spec.net_raw,
        desired_state=spec.state,
        restarts=st.restarts,
        message=st.message,
        generation=res.generation,
        observed_generation=res.observed_generation,
        started_at=st.started_at,
        # the outcome; the decision itself is GET /v1/instances/NAME/why
        placement={k: v for k, v in (st.placement or {}).items() if k != "decision"} or None,
        conditions=st.conditions,
        health_check=spec.health.model_dump(mode="json") if spec.health else None,
        health=st.health.model_dump(mode="json") if st.health else None,
        labels=res.labels,
    )


def set_state(records: Records, res: Resource, state: str, **fields: Any) -> None:
    """Writes status (with the Ready condition) only when something changed."""
    old = InstanceStatus.of(res)
    new = old.model_copy(update={**fields, "state": state})
    new.conditions = set_condition(
        old.conditions, READY, state == "running", state.capitalize(), new.message, res.generation
    )
    status = new.dump()
    if status != res.status or res.phase != state or res.observed_generation != res.generation:
        records.update_status(res.id, status=status, phase=state, observed_generation=res.generation)
