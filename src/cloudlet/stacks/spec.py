"""The stack YAML: pydantic models of the document (unknown fields refused) and a parser whose errors name the
line and the field ("line 12: layers.web.cuont: unknown field"), so a typo is found without reading a trace."""

from __future__ import annotations

__all__ = [
    "check_flag_key",
    "MAX_FLAGS",
    "FLAG_VALUE_MAX",
    "FlagValue",
    "StackDoc",
    "Layer",
    "ImageRecipe",
    "Hooks",
    "HOOKS",
    "parse_stack",
    "stack_schema",
]

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cloudlet.compute.resource import HealthCheck as InstanceHealthCheck
from cloudlet.core.errors import BadRequest, CloudletError
from cloudlet.core.records import NAME_RE, NAME_RULES, NO_NUL
from cloudlet.lb.loadbalancers import HealthCheck
from cloudlet.network import ipam
from cloudlet.network.networks import Subnet
from cloudlet.network.secgroups import normal_rule
from cloudlet.storage.volumes import ATTACH_PATH, AttachRequest

T = TypeVar("T")
HOOKS = ("setup", "configure", "deploy", "undeploy", "shutdown")  # OpsWorks' lifecycle events, in life order
MAX_COUNT = 500  # instances per layer
MAX_NODES = 200_000  # values in a document, counting each use of an alias
MAX_DEPTH = 32
MAX_FLAGS = 64  # flags of a stack: each is served by the metadata service and kept in its spec
FLAG_VALUE_MAX = 256
Key = Annotated[str, Field(min_length=1, max_length=40, pattern=NAME_RE.pattern, description=NAME_RULES)]
Script = Annotated[str, Field(max_length=64 * 1024, pattern=NO_NUL)]
FlagValue = Annotated[str, Field(max_length=FLAG_VALUE_MAX)]


def check_flag_key(key: str) -> None:
    if not key or len(key) > 63 or not all(c.isalnum() or c in "-_." for c in key):
        raise BadRequest(f"flag {key!r}: use 1-63 letters, digits, '-', '_' or '.'")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Placement(_Strict):
    spread: Literal["hosts", "zones"] | None = Field(
        None,
        description="zones: give each instance a zone in turn; otherwise placement spreads a layer over zones, "
        "then hosts",
    )
    anti_affinity: Literal["prefer", "hosts"] = Field(
        "prefer", description="prefer: avoid a host holding the layer while another can; hosts: never share one"
    )


class NetworkDef(_Strict):
    name: Key | None = Field(None, description="the network's name; default STACK-KEY")
    subnet: Subnet | None = Field(None, description="e.g. 10.240.50.0/24; omit for the next free /24")

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: str | None) -> str | None:
        # the same check as `network create` (the tenant's own prefix limit is applied when it is made)
        return None if v is None else str(_valid(lambda: ipam.parse_subnet(v, ipam.ADMIN_MIN_PREFIX)))


class Rule(_Strict):
    """Lets in traffic from `cidr` or from the members of `source` (a key of security_groups)."""

    protocol: Literal["tcp", "udp", "icmp", "all"] = "tcp"
    ports: str | int | None = Field(None, description="tcp and udp: a port or range, 80 or '8000-8100'")
    cidr: str | None = Field(None, description="IPv4 source network, e.g. 0.0.0.0/0")
    source: Key | None = Field(None, description="a security group of this stack (its key)")

    @model_validator(mode="after")
    def _normal(self) -> Rule:
        # the checks (and the normal form) of `secgroup rule add`: 99999 or '::/0' is refused here, not looped on
        ports = None if self.ports is None else str(self.ports)
        self.ports, self.cidr = _valid(lambda: normal_rule(self.protocol, ports, self.cidr))
        return self


class SecurityGroupDef(_Strict):
    name: Key | None = None
    rules: list[Rule] = Field(default_factory=list, max_length=256)


class VolumeDef(_Strict):
    name: Key
    size_gib: int = Field(1, ge=1, le=16384)
    path: str = Field("/data", max_length=255, pattern=NO_NUL, json_schema_extra={"pattern": ATTACH_PATH})

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return AttachRequest._path(v)  # volume attach's own rule: absolute, no '..', not /proc, /sys, /dev, /etc


class ImageRecipe(_Strict):
    base: Literal["debian-12"] = "debian-12"
    packages: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9+.:-]+$", max_length=255)]] = Field(
        default_factory=list, max_length=1000
    )


class Hooks(_Strict):
    setup: Script | None = Field(None, description="after boot; the instance joins its LB only once it succeeds")
    configure: Script | None = Field(None, description="on every instance whenever membership changes")
    deploy: Script | None = Field(None, description="after setup, and on 'stack deploy'")
    undeploy: Script | None = Field(None, description="before a rolling deploy's deploy, once out of the LB")
    shutdown: Script | None = Field(None, description="before the instance is removed, once its LB drained it")


class Layer(_Strict):
    image: str | ImageRecipe = Field("busybox", description="an image name, or a recipe {base, packages}")
    count: int = Field(1, ge=0, le=MAX_COUNT)
    cpus: float = Field(1.0, gt=0, le=64)
    memory: int = Field(256, ge=16, le=1024 * 1024, description="MiB")
    disk_gib: int = Field(2, ge=1, le=1024)
    network: Key | None = Field(None, description="a key of networks; default: the stack's only network or default")
    command: Script | None = Field(None, description="shell command to run instead of the image's")
    secgroups: list[Key] = Field(default_factory=list, description="keys of security_groups")
    volumes: list[VolumeDef] = Field(default_factory=list, max_length=16)
    user_data: Script | None = None
    hooks: Hooks = Field(default_factory=lambda: Hooks.model_validate({}))
    placement: Placement | None = None
    replicas: int = Field(
        0, ge=0, le=1, description="1: each instance's root disk and volumes are kept on a host in another zone"
    )
    replica_interval_s: float = Field(5.0, ge=0.5, le=3600, description="seconds between replica updates")
    health: InstanceHealthCheck | None = Field(None, description="each instance's health check, as on launch")
    ha: bool = Field(
        True, strict=True, description="HA-managed instances: started on another host when theirs fails (false: not)"
    )


class LoadBalancerDef(_Strict):
    name: Key | None = None
    port: int = Field(80, ge=1, le=65535)
    layer: Key = Field(description="the layer whose healthy members it balances")
    target_port: int | None = Field(None, ge=1, le=65535, description="members' port; default: port")
    health_check: HealthCheck | None = Field(None, description="http:/PATH or tcp, e.g. http:/health")
    network: Key | None = None


class EipDef(_Strict):
    name: Key | None = None
    load_balancer: Key | None = Field(None, description="a key of load_balancers to hold it")
    instance: Key | None = Field(None, description="an instance of this stack (LAYER-N) to hold it")


class StackDoc(_Strict):
    name: Key = Field(description="the stack's name; its instances are LAYER-N.NAME.cloudlet")
    zone: Key | None = None
    flags: dict[str, FlagValue] = Field(default_factory=dict, max_length=MAX_FLAGS)
    placement: Placement = Field(default_factory=lambda: Placement.model_validate({}))
    networks: dict[Key, NetworkDef] = Field(default_factory=dict)
    security_groups: dict[Key, SecurityGroupDef] = Field(default_factory=dict)
    layers: dict[Key, Layer] = Field(default_factory=dict)
    load_balancers: dict[Key, LoadBalancerDef] = Field(default_factory=dict)
    eips: dict[Key, EipDef] = Field(default_factory=dict)

    @field_validator("flags")
    @classmethod
    def _flags(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            try:
                check_flag_key(key)
            except BadRequest as exc:
                raise ValueError(exc.message) from None
        return v


def _valid(check: Callable[[], T]) -> T:
    """What `check` returns; its CloudletError as the ValueError pydantic turns into 'line N: field: message'."""
    try:
        return check()
    except CloudletError as exc:
        raise ValueError(exc.message) from None


def stack_schema() -> dict[str, Any]:
    """The JSON Schema of the document, for editors (yaml-language-server) to validate as one types."""
    schema = StackDoc.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cloudlet stack"
    return schema


Path = tuple[str | int, ...]


def _compose(text: str) -> tuple[Any, dict[Path, int]]:
    """The document as plain data, and the line (1-based) of every key and value by its path."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # a character YAML does not allow, found as the reader starts
        raise BadRequest(f"line 1: invalid YAML: {exc}") from None
    marks: dict[Path, int] = {}
    budget = [MAX_NODES]

    def build(node: yaml.Node, path: Path) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or len(path) > MAX_DEPTH:  # aliases can make a small text huge ("billion laughs")
            raise BadRequest(f"line {node.start_mark.line + 1}: the document is too large or too deeply nested")
        marks.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for knode, vnode in node.value:
                key = loader.construct_object(knode, deep=True)
                if not isinstance(key, str | int):
                    raise BadRequest(f"line {knode.start_mark.line + 1}: keys must be plain names")
                if key in out:
                    raise BadRequest(f"line {knode.start_mark.line + 1}: {_dotted((*path, key))}: duplicate key")
                marks[(*path, key)] = knode.start_mark.line + 1
                out[key] = build(vnode, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(v, (*path, i)) for i, v in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    try:
        root = loader.get_single_node()  # the composer recurses too: the depth check below comes after it
        return (build(root, ()) if root is not None else None), marks
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark else ""
        raise BadRequest(f"{where}invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise BadRequest(f"invalid YAML: {exc}") from None
    except (RecursionError, ValueError, OverflowError) as exc:  # nesting beyond the composer, bad timestamps...
        raise BadRequest(f"invalid YAML: {type(exc).__name__}: {str(exc)[:200]}") from None
    finally:
        loader.dispose()


def _dotted(path: Path) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[") or "(document)"


def _explain(err: Any, marks: dict[Path, int]) -> str:
    # pydantic adds union branch tags ("str", "ImageRecipe") to the location: keep only what is in the document
    path: Path = ()
    loc = tuple(err["loc"])
    for i, part in enumerate(loc):
        if (*path, part) in marks or (i == len(loc) - 1 and err["type"] in ("extra_forbidden", "missing")):
            path = (*path, part)
    known = path
    while known and known not in marks:
        known = known[:-1]
    line = marks.get(known, 1)
    if err["type"] == "extra_forbidden":
        what = "unknown field"
    elif err["type"] == "missing":
        what = "required field missing"
    else:
        what = err["msg"]
    return f"line {line}: {_dotted(path)}: {what}"


def parse_stack(text: str) -> StackDoc:
    """The stack document in `text`; BadRequest naming line and field of the first problems otherwise."""
    data, marks = _compose(text)
    if not isinstance(data, dict):
        raise BadRequest("line 1: a stack is a YAML mapping with at least 'name:'")
    try:
        doc = StackDoc.model_validate(json.loads(json.dumps(data, default=str)))
    except ValidationError as exc:
        errors = exc.errors()
        lines = [_explain(e, marks) for e in errors[:5]]
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise BadRequest("; ".join(lines) + more) from None
    _check_refs(doc)
    return doc


def _check_refs(doc: StackDoc) -> None:
    """References between sections point at keys that exist, and names stay valid DNS labels."""
    for key, layer in doc.layers.items():
        where = f"layers.{key}"
        if len(f"{key}-{MAX_COUNT}") > 63:
            raise BadRequest(f"{where}: layer name too long for its instances' names ({key}-N)")
        if layer.network is not None and layer.network not in doc.networks:
            raise BadRequest(f"{where}.network: {layer.network!r} is not a key of networks")
        for sg in layer.secgroups:
            if sg not in doc.security_groups:
                raise BadRequest(f"{where}.secgroups: {sg!r} is not a key of security_groups")
        names = [v.name for v in layer.volumes]
        if len(set(names)) != len(names):
            raise BadRequest(f"{where}.volumes: two volumes with the same name")
    for key, group in doc.security_groups.items():
        for i, rule in enumerate(group.rules):
            if (rule.cidr is None) == (rule.source is None):
                raise BadRequest(f"security_groups.{key}.rules[{i}]: give exactly one of cidr or source")
            if rule.source is not None and rule.source not in doc.security_groups:
                raise BadRequest(f"security_groups.{key}.rules[{i}].source: {rule.source!r} is not a group here")
    for key, lb in doc.load_balancers.items():
        if lb.layer not in doc.layers:
            raise BadRequest(f"load_balancers.{key}.layer: {lb.layer!r} is not a key of layers")
        if lb.network is not None and lb.network not in doc.networks:
            raise BadRequest(f"load_balancers.{key}.network: {lb.network!r} is not a key of networks")
    for key, eip in doc.eips.items():
        if (eip.load_balancer is None) == (eip.instance is None):
            raise BadRequest(f"eips.{key}: give exactly one of load_balancer or instance")
        if eip.load_balancer is not None and eip.load_balancer not in doc.load_balancers:
            raise BadRequest(f"eips.{key}.load_balancer: {eip.load_balancer!r} is not a key of load_balancers")
