"""Every domain registered in one place: its kinds (declared by its modules on import), the reconcilers the
control plane runs, the reconcilers each host's agent runs, and its API routers. cloudletd, the agent and the
API app all wire themselves from this list."""

from __future__ import annotations

__all__ = ["Domain", "DOMAINS"]

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloudlet.compute import images
from cloudlet.compute.runtime import InstanceReconciler
from cloudlet.compute.scheduler import SchedulerReconciler
from cloudlet.core.collect import OwnerCollector
from cloudlet.core.context import Cloud, HostContext
from cloudlet.lb.loadbalancers import LbPlacer, LoadBalancerReconciler
from cloudlet.network.eips import EipReconciler, PublicReconciler
from cloudlet.network.networks import BridgeReconciler, NetworkReconciler
from cloudlet.network.secgroups import SecurityGroupPlumber
from cloudlet.resilience.drain import DrainResumer
from cloudlet.resilience.drills import DrillReaper, DrillScheduler
from cloudlet.resilience.health import HealthReconciler
from cloudlet.resilience.monitor import HostMonitor
from cloudlet.resilience.recovery import RecoveryController
from cloudlet.stacks.stacks import StackReconciler
from cloudlet.storage import backups, policies, replication, volumes


@dataclass(frozen=True)
class Domain:
    name: str
    control_plane: tuple[Callable[[Cloud], Any], ...] = ()
    agent: tuple[Callable[[HostContext], Any], ...] = ()
    routers: tuple[str, ...] = ()  # modules with a `router`; the app imports them (domains import no API code)


DOMAINS = (
    Domain(
        "compute",
        control_plane=(SchedulerReconciler,),
        agent=(InstanceReconciler, images.ImageReconciler),
        routers=("cloudlet.api.routes.compute", "cloudlet.api.routes.images", "cloudlet.api.routes.hosts"),
    ),
    Domain(
        "network",
        control_plane=(NetworkReconciler, EipReconciler),
        agent=(BridgeReconciler, PublicReconciler),
        routers=("cloudlet.api.routes.networks", "cloudlet.api.routes.eips"),
    ),
    Domain("secgroups", agent=(SecurityGroupPlumber,), routers=("cloudlet.api.routes.secgroups",)),
    Domain(
        "storage",
        control_plane=(policies.BackupPolicyReconciler, replication.ReplicaPlanner),
        agent=(
            lambda ctx: volumes.VolumeReconciler(ctx, restore=backups.restore_into),
            lambda ctx: volumes.SnapshotReconciler(ctx, restore=backups.restore_into),
            backups.BackupReconciler,
            replication.ReplicationReconciler,
        ),
        routers=("cloudlet.api.routes.storage",),
    ),
    Domain("stacks", control_plane=(StackReconciler,), routers=("cloudlet.api.routes.stacks",)),
    Domain(
        "lb",
        control_plane=(LbPlacer,),
        agent=(LoadBalancerReconciler,),
        routers=("cloudlet.api.routes.lb",),
    ),
    Domain(
        "resilience",
        control_plane=(HostMonitor, RecoveryController, DrainResumer, DrillReaper, DrillScheduler),
        agent=(HealthReconciler,),
        routers=("cloudlet.api.routes.dr",),
    ),
    Domain(
        "system",
        control_plane=(lambda cloud: OwnerCollector(cloud.store),),
        routers=("cloudlet.api.routes.system", "cloudlet.api.routes.events", "cloudlet.api.routes.labels"),
    ),
)
