"""What a stack document asks for, compared with what the stack owns: an ordered list of actions.

Pure and fast (no store, no I/O): `desired()` turns the document into named resources, `plan()` compares them
with the owned records. A field listed in a resource's `replace_on` can only change by making the resource
again (an instance's image, a network's subnet); the plan says which field forces it.
"""

from __future__ import annotations

__all__ = ["Desired", "Action", "desired", "plan", "recipe_image", "network_name", "KIND_ORDER"]

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from cloudlet.stacks.spec import ImageRecipe, Layer, StackDoc

# the order resources are made in; deletes go the other way
# (an LB before the instances it balances, so each joins it drained until its setup succeeded)
KIND_ORDER = ("Network", "SecurityGroup", "Volume", "LoadBalancer", "Instance", "ElasticIP")
Op = Literal["create", "update", "replace", "delete", "unchanged"]


@dataclass(frozen=True)
class Desired:
    kind: str
    name: str
    fields: dict[str, Any]  # compared with the record's spec (keys the record does not have are not compared)
    replace_on: frozenset[str] = frozenset()  # fields that cannot change in place
    params: dict[str, Any] = field(default_factory=dict)  # what making it takes beyond `fields` (layer, index...)


@dataclass(frozen=True)
class Action:
    op: Op
    kind: str
    name: str
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # field -> (now, wanted)
    forced_by: tuple[str, ...] = ()  # the changed fields that force a replace
    desired: Desired | None = None
    id: str | None = None  # the existing record's

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "kind": self.kind, "name": self.name}
        if self.changes:
            out["changes"] = {k: {"from": a, "to": b} for k, (a, b) in self.changes.items()}
        if self.forced_by:
            out["forced_by"] = list(self.forced_by)
        return out


def recipe_image(recipe: ImageRecipe) -> str:
    """An image recipe's image name: by content, so every stack of a tenant asking for the same packages shares
    one build (the build itself is cached by digest, compute/images.py)."""
    key = recipe.base + ":" + ",".join(sorted(set(recipe.packages)))
    return "recipe-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def network_name(doc: StackDoc, key: str | None) -> str:
    """The network a layer (or LB) with network `key` uses: the named one, else the stack's only one, else the
    tenant's default network."""
    if key is None:
        if len(doc.networks) != 1:
            return "default"
        key = next(iter(doc.networks))
    net = doc.networks[key]
    return net.name or f"{doc.name}-{key}"


def _zone_of(doc: StackDoc, layer: Layer, index: int, zones: list[str], pin: str | None) -> str | None:
    if pin:
        return pin
    spread = (layer.placement or doc.placement).spread
    if spread == "zones" and zones:
        return zones[(index - 1) % len(zones)]
    return doc.zone


def desired(doc: StackDoc, zones: list[str] | None = None, pin: str | None = None) -> list[Desired]:
    """Every resource the document asks for, in the order they are made. `pin`: the zone a DR drill put the stack
    in (its label cloudlet.io/dr-zone), every instance's, changed in place: the drill moves them itself."""
    out: list[Desired] = []
    for key, net in doc.networks.items():
        subnet = {"subnet": net.subnet} if net.subnet else {}
        out.append(Desired("Network", net.name or f"{doc.name}-{key}", subnet, frozenset(subnet), {"key": key}))
    groups = {key: sg.name or f"{doc.name}-{key}" for key, sg in doc.security_groups.items()}
    for key, sg in doc.security_groups.items():
        # ports and cidr in the stored rule's normal form (spec.Rule applies secgroups.normal_rule), so the ids
        # the reconciler compares (rule_id) match those of the rules it made
        rules = [
            {
                "protocol": r.protocol,
                "ports": None if r.ports is None else str(r.ports),
                "cidr": r.cidr,
                "source_group": groups[r.source] if r.source else None,
            }
            for r in sg.rules
        ]
        out.append(Desired("SecurityGroup", groups[key], {}, frozenset(), {"rules": rules}))
    instances: list[Desired] = []
    for lname, layer in doc.layers.items():
        image = layer.image if isinstance(layer.image, str) else recipe_image(layer.image)
        command = ["sh", "-c", layer.command] if layer.command else None
        # replicas and HA change in place: the disks stay, shipping starts or stops (storage/replication.py)
        replicas = {"replicas": layer.replicas, "replica_interval_s": layer.replica_interval_s}
        # a health check changes in place too (the agent starts again from unknown)
        health = {"health": layer.health.model_dump(mode="json") if layer.health else None}
        for n in range(1, layer.count + 1):
            name = f"{lname}-{n}"
            for vol in layer.volumes:
                out.append(
                    Desired(
                        "Volume",
                        f"{name}-{vol.name}",
                        {"size_gib": vol.size_gib, **replicas},
                        frozenset({"size_gib"}),
                        {"instance": name, "path": vol.path},
                    )
                )
            fields: dict[str, Any] = {
                "image": image,
                "network": network_name(doc, layer.network),
                "cpus": layer.cpus,
                "memory_mib": layer.memory,
                "disk_gib": layer.disk_gib,
                "command": command,
                "zone": _zone_of(doc, layer, n, zones or [], pin),
            }
            if layer.user_data is not None:
                fields["user_data"] = layer.user_data
            params = {"layer": lname, "index": n, "secgroups": [groups[s] for s in layer.secgroups]}
            in_place = {**replicas, **health, "ha": layer.ha}
            # a pinned zone, or none asked (placement's choice), changes in place: the instance stays where it runs
            replace_on = frozenset(fields) - ({"zone"} if pin or fields["zone"] is None else set())
            instances.append(Desired("Instance", name, {**fields, **in_place}, replace_on, params))
    for key, lb in doc.load_balancers.items():
        wanted: dict[str, Any] = {
            "port": lb.port,
            "layer": f"{doc.name}/{lb.layer}",
            "network": network_name(doc, lb.network),
        }
        extra = {"health_check": lb.health_check, "target_port": lb.target_port}
        wanted.update({k: v for k, v in extra.items() if v is not None})
        out.append(Desired("LoadBalancer", lb.name or f"{doc.name}-{key}", wanted, frozenset({"network"}), {}))
    out += instances
    for key, eip in doc.eips.items():
        holder = eip.instance or (
            doc.load_balancers[eip.load_balancer].name or f"{doc.name}-{eip.load_balancer}" if eip.load_balancer else ""
        )
        params = {"holder_kind": "Instance" if eip.instance else "LoadBalancer", "holder": holder}
        out.append(Desired("ElasticIP", eip.name or f"{doc.name}-{key}", {}, frozenset(), params))
    return out


def plan(wanted: list[Desired], owned: list[Any]) -> list[Action]:
    """Actions that take the owned records (core Resource objects) to `wanted`: creates, updates and replaces in
    making order, then deletes (instances newest first, so scaling down removes the newest)."""
    by_key = {(r.kind, r.name): r for r in owned}
    actions: list[Action] = []
    for d in wanted:
        res = by_key.pop((d.kind, d.name), None)
        if res is None:
            actions.append(Action("create", d.kind, d.name, desired=d))
            continue
        spec = res.spec
        changes = {k: (spec[k], v) for k, v in d.fields.items() if k in spec and spec[k] != v}
        forced = tuple(k for k in changes if k in d.replace_on)
        if res.deleted_at is not None:  # going away (a replace under way): made again once gone
            actions.append(Action("create", d.kind, d.name, changes, forced, d, res.id))
        elif forced:
            actions.append(Action("replace", d.kind, d.name, changes, forced, d, res.id))
        elif changes:
            actions.append(Action("update", d.kind, d.name, changes, (), d, res.id))
        else:
            actions.append(Action("unchanged", d.kind, d.name, desired=d, id=res.id))
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    leftover = [r for r in by_key.values() if r.deleted_at is None]
    leftover.sort(key=lambda r: (-rank.get(r.kind, len(rank)), -r.created_at, r.name))
    actions += [Action("delete", r.kind, r.name, id=r.id) for r in leftover]
    return actions
