"""Image kind: root filesystems instances boot from, content-addressed by digest.

Sources: `busybox` (always present, from Debian's busybox-static), `debootstrap` (Debian from the mirror apt
already uses, cached by suite+packages+mirror), `import` (a rootfs tarball). Each image is a read-only pool volume
`images/<digest>` in every host's pool, made by that host's agent (an import is handed to the agents by the control
plane); instance root disks are its clones.

Images are owned. Public ones (record tenant `public`: busybox, and whatever the admin builds or imports) every
tenant can launch, and only the admin may make, rebuild or delete. A tenant's own images (record tenant = the
tenant) only it sees, under names no public image has; a name resolves to the caller's own image first, then the
public one. Images count against the tenant's quota (`images`, `image_gib`).
"""

from __future__ import annotations

__all__ = [
    "KIND",
    "BUSYBOX_COMMAND",
    "ensure_busybox",
    "request_build",
    "import_image",
    "image_view",
    "holders",
    "held_digests",
    "ImageReconciler",
    "volume_of",
    "get_image",
    "ImageBuild",
    "uploads_dir",
    "unpack_import",
    "check_import",
    "upload_slot",
    "discard_stale_uploads",
    "visible_images",
    "delete_image",
]

import hashlib
import json
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloudlet.compute.resource import HOST, IMAGE, INSTANCE, HostStatus, ImageSpec, ImageStatus, InstanceSpec
from cloudlet.core import quota
from cloudlet.core.config import MACHINE_NETNS_FD
from cloudlet.core.context import PUBLIC_TENANT, SYSTEM_TENANT, Caller, Cloud, HostContext
from cloudlet.core.errors import (
    Conflict,
    DriverError,
    Forbidden,
    InvalidSpec,
    NotFound,
    PayloadTooLarge,
    TerminalError,
    TooManyRequests,
)
from cloudlet.core.labels import Labels
from cloudlet.core.reconcile import KindReconciler, Result
from cloudlet.core.records import Name, Resource, check_name, record_view
from cloudlet.core.store import Guard
from cloudlet.storage.resource import BACKUP, SNAPSHOT, BackupSpec, SnapshotSpec
from cloudlet.storage.shift import drop_shifted
from cloudlet.storage.untar import UnpackLimits, lookup, unpack

KIND = IMAGE
BUSYBOX = Path("/bin/busybox")
BUSYBOX_COMMAND = [
    "/bin/sh",
    "-c",
    'mkdir -p /var/www && echo "hello from $(hostname)" > /var/www/index.html && exec httpd -f -p 80 -h /var/www',
]
DEBIAN_COMMAND = ["/bin/sh", "-c", "exec sleep infinity"]
SUITES = {"debian-12": "bookworm"}
BUILT_IN = "busybox"  # made by every `up`: nobody builds or imports over it
GIB = 1 << 30
_lock = threading.Lock()
_uploading: set[str] = set()  # tenants with an import streaming in: one at a time each


def _size_bytes(res: Resource) -> int:
    """What an image takes: its size once a host measured it, else the tarball it was imported from."""
    size_mib = ImageStatus.of(res).size_mib
    return size_mib << 20 if size_mib is not None else ImageSpec.of(res).upload_bytes or 0


# the image quotas (core/quota.py): counted on the owning tenant's own images; public images count for nobody
quota.register_meter(quota.Meter("images", IMAGE, lambda r: 0 if r.deleting else 1, 20))
quota.register_meter(quota.Meter("image_gib", IMAGE, lambda r: 0 if r.deleting else _size_bytes(r) / GIB, 50))
Package = Annotated[
    str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9+.:-]+$", description="a Debian package name")
]


class ImageBuild(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: Labels = {}
    name: Name
    packages: list[Package] = Field([], max_length=1000)

    @field_validator("packages")
    @classmethod
    def _packages(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p or not all(c.isalnum() or c in "+-.:" for c in p):
                raise ValueError(f"package name {p!r} is not a valid Debian package name")
        return sorted(set(v))


def uploads_dir(cloud: Cloud) -> Path:
    """Where uploads wait before they are unpacked into the pool."""
    path = cloud.config.home / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def discard_stale_uploads(cloud: Cloud) -> None:
    """At start: uploads a killed cloudletd was receiving are never finished."""
    for path in uploads_dir(cloud).glob(".upload-*"):
        path.unlink(missing_ok=True)


def volume_of(image: Resource) -> str:
    return f"images/{ImageSpec.of(image).digest}"


def _fill(cloud: HostContext, digest: str, fill: Callable[[Path], None]) -> None:
    """Builds an image volume: fill a writable `.partial` volume, then seal it read-only under its digest,
    so a crash mid-build never leaves something that looks finished."""
    final = f"images/{digest}"
    if cloud.pool.exists(final):
        return
    partial = final + ".partial"
    cloud.pool.delete(partial)
    root = cloud.pool.create_volume(partial)
    try:
        fill(root)
    except BaseException:
        cloud.pool.delete(partial)
        raise
    cloud.pool.seal(partial, final)


def _busybox_tree(root: Path) -> None:
    for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "var/www", "proc", "sys", "dev"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        link = root / applet
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    os.chmod(root / "tmp", 0o1777)


def _owner(caller: Caller) -> str:
    """The admin's images are public; a tenant's are its own."""
    return PUBLIC_TENANT if caller.is_admin else caller.tenant


def _record(
    cloud: Cloud,
    tenant: str,
    name: str,
    spec: ImageSpec,
    phase: str,
    labels: dict[str, str] | None = None,
    guard: Guard | None = None,
) -> Resource:
    res = Resource(kind=KIND, tenant=tenant, name=name, spec=spec.dump(), phase=phase, labels=labels or {})
    owner = "public" if tenant == PUBLIC_TENANT else f"tenant {tenant}'s"
    return cloud.store.create(res, created=f"{owner} image {name} from {spec.source}", guard=guard)


def _claim(cloud: Cloud, caller: Caller, name: str) -> str:
    """Whose image a create or rebuild of `name` by caller makes, refusing names it may not use: the built-in
    image's, and for tenants those of public images (they would shadow what every tenant shares)."""
    check_name("image", name)
    if name == BUILT_IN:
        if not caller.is_admin:
            raise Forbidden(f"{BUILT_IN} is the built-in public image; only the admin may change it")
        raise Conflict(f"{BUILT_IN} is built in (from the host's busybox-static); choose another name")
    owner = _owner(caller)
    if owner != PUBLIC_TENANT and cloud.store.list(KIND, tenant=PUBLIC_TENANT, name=name):
        raise Forbidden(f"image {name!r} is a public image: only the admin may change it; choose another name")
    return owner


def ensure_busybox(cloud: Cloud) -> Resource:
    """The built-in image's record, repaired at every start if it failed or its spec was changed; each agent fills
    it from its host's busybox-static (simulated hosts need no files: their fake driver reads none)."""
    real = cloud.config.compute_driver != "fake"
    digest = "busybox-" + (hashlib.sha256(BUSYBOX.read_bytes()).hexdigest()[:16] if real else "sim")
    spec = ImageSpec(source="busybox", digest=digest, command=BUSYBOX_COMMAND)
    with _lock:
        for res in cloud.store.list(KIND, tenant=PUBLIC_TENANT, name=BUILT_IN):
            if ImageSpec.of(res) != spec or res.phase == "failed":
                res = cloud.store.update_spec(res.id, spec.dump())
                res = cloud.store.update_status(res.id, phase="pending", status=ImageStatus().dump())
                cloud.store.add_event(res, "Repaired", f"{BUILT_IN} reset to the built-in image {digest}")
            return res
        return _record(cloud, PUBLIC_TENANT, BUILT_IN, spec, "pending")


def request_build(cloud: Cloud, caller: Caller, req: ImageBuild, retry_failed: bool = True) -> Resource:
    """The image record of a build, made or found (same content: cached). A failed build of the same content is
    tried again only with retry_failed (a controller asking again on every pass would run debootstrap in a loop)."""
    owner = _claim(cloud, caller, req.name)
    base = req.name if req.name in SUITES else "debian-12"
    suite = SUITES[base]
    mirror = cloud.config.debian_mirror
    key = json.dumps({"suite": suite, "packages": req.packages, "mirror": mirror}, sort_keys=True)
    digest = f"{base}-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    spec = ImageSpec(
        source="debootstrap", suite=suite, packages=req.packages, mirror=mirror, digest=digest, command=DEBIAN_COMMAND
    )
    for res in cloud.store.list(KIND, tenant=owner, name=req.name):
        if ImageSpec.of(res).digest == digest and (res.phase != "failed" or not retry_failed):
            return res  # same content: the build is cached (or failed, and not to be retried)
        return cloud.store.update_spec(res.id, spec.dump())
    return _record(cloud, owner, req.name, spec, "pending", req.labels, quota.guard(caller.tenant, {"images": 1}))


def _check_quota(cloud: Cloud, caller: Caller, need: dict[str, float]) -> None:
    """The quota as it stands now, for what cannot wait for the create's own check: an upload's bytes."""
    for name, extra in need.items():
        row = quota.report(cloud.store, caller.tenant)[name]
        limit = row["limit"]
        if limit is not None and extra and (row["used"] or 0) + extra > limit:
            raise Conflict(
                f"quota exceeded: {name} would be {(row['used'] or 0) + extra:g}, the limit is {limit}; "
                "delete something or ask the admin for a larger quota"
            )


def check_import(cloud: Cloud, caller: Caller, name: str, declared: int | None) -> str:
    """All an import can be refused for before its body is read: the name, the declared size (Content-Length)
    against the upload cap, and the quota. Returns the owner."""
    owner = _claim(cloud, caller, name)
    if cloud.store.list(KIND, tenant=owner, name=name):
        raise Conflict(f"image {name!r} already exists; import under another name or delete it first")
    cap = cloud.config.max_upload_bytes
    if declared is not None and declared > cap:
        raise PayloadTooLarge(f"the tarball is {declared} bytes; an image upload may be at most {cap} bytes")
    _check_quota(cloud, caller, {"images": 1, "image_gib": (declared or 0) / GIB})
    return owner


@contextmanager
def upload_slot(caller: Caller) -> Iterator[None]:
    """One upload at a time per tenant, so that one tenant's parallel uploads cannot fill the host's disk."""
    with _lock:
        if caller.tenant in _uploading:
            raise TooManyRequests("an image upload of yours is still in progress; retry when it has finished")
        _uploading.add(caller.tenant)
    try:
        yield
    finally:
        with _lock:
            _uploading.discard(caller.tenant)


def import_image(cloud: Cloud, caller: Caller, name: str, tarball: Path, size: int) -> Resource:
    """Hands a received rootfs tarball to every host's agent to unpack; the image's digest is its sha256."""
    owner = check_import(cloud, caller, name, size)  # again: things may have changed while it streamed in
    h = hashlib.sha256()
    with open(tarball, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    digest = "import-" + h.hexdigest()[:16]
    for host in cloud.store.list(HOST):
        cloud.hosts.agent(host.name).import_image(digest, tarball)
    spec = ImageSpec(source="import", digest=digest, command=DEBIAN_COMMAND, upload_bytes=size)
    need = {"images": 1, "image_gib": size / GIB}
    return _record(cloud, owner, name, spec, "ready", guard=quota.guard(caller.tenant, need))


def unpack_import(ctx: HostContext, digest: str, tarball: Path) -> None:
    """Agent side of an import: the tarball becomes the sealed pool volume of the image, unpacked by
    storage/untar.py (never by tarfile's own extraction) within the configured limits."""
    limits = UnpackLimits(max_bytes=ctx.config.max_image_bytes, max_files=ctx.config.max_image_files)

    def fill(root: Path) -> None:
        if not root.is_dir():
            return  # a pool that keeps no files (the simulation's memory pool): nothing to unpack into
        with open(tarball, "rb") as f:
            unpack(f, root, limits)
        sh = lookup(root, "/bin/sh")  # as the container will resolve it, not through the host's symlinks
        if sh is None or not stat.S_ISREG(sh.st_mode):
            raise InvalidSpec("the tarball has no /bin/sh; an image must be a root filesystem")

    _fill(ctx, digest, fill)


def visible_images(cloud: Cloud, caller: Caller) -> list[Resource]:
    """The public images and the caller's own."""
    owner = _owner(caller)
    mine = cloud.store.list(KIND, tenant=owner) if owner != PUBLIC_TENANT else []
    return cloud.store.list(KIND, tenant=PUBLIC_TENANT) + mine


def get_image(cloud: Cloud, caller: Caller, name: str) -> Resource:
    """The caller's own image of that name, else the public one; another tenant's image does not exist here."""
    for tenant in dict.fromkeys((_owner(caller), PUBLIC_TENANT)):
        for res in cloud.store.list(KIND, tenant=tenant, name=name):
            return res
    names = ", ".join(sorted({r.name for r in visible_images(cloud, caller)})) or "none"
    raise NotFound(f"image {name!r} not found; available images: {names}")


def delete_image(cloud: Cloud, caller: Caller, name: str) -> Resource:
    """Refused for a public image unless by the admin, and while anything boots from it (instances, and
    snapshots and backups that would boot one); each host's agent then removes its pool volume."""
    res = get_image(cloud, caller, name)
    if res.tenant == PUBLIC_TENANT and not caller.is_admin:
        raise Forbidden(f"image {name!r} is a public image: only the admin may delete it")
    users = [i for i in cloud.store.list(INSTANCE) if InstanceSpec.of(i).image_id == res.id]
    users += [s for s in cloud.store.list(SNAPSHOT) if SnapshotSpec.of(s).image_id == res.id]
    users += [b for b in cloud.store.list(BACKUP) if BackupSpec.of(b).image_id == res.id]
    users = [u for u in users if not u.deleting]
    if users:
        named = ", ".join(
            f"{u.kind.lower()} {u.name if u.tenant == caller.tenant else f'{u.tenant}/{u.name}'}" for u in users
        )
        raise Conflict(f"image {name} is still used by {named}; delete those first")
    res = cloud.store.mark_deleted(res.id)
    cloud.store.add_event(res, "Deleting", f"image {name} deleted")
    return res


def holders(cloud: Cloud) -> dict[str, list[str]]:
    """Image digest -> the hosts whose pool holds it, as their agents last said: where an instance boots from it
    at once (elsewhere it waits for that host's build)."""
    out: dict[str, list[str]] = {}
    for host in cloud.store.cached(HOST).list(SYSTEM_TENANT):
        for digest in HostStatus.of(host).images:
            out.setdefault(digest, []).append(host.name)
    return out


def held_digests(ctx: HostContext, records: Iterable[Resource]) -> list[str]:
    """What an agent tells in its heartbeat: the digests of these images its pool holds."""
    return sorted({ImageSpec.of(r).digest for r in records if ctx.pool.exists(volume_of(r))})


def image_view(res: Resource, held: dict[str, list[str]]) -> dict[str, object]:
    spec, st = ImageSpec.of(res), ImageStatus.of(res)
    return record_view(
        res,
        source=spec.source,
        digest=spec.digest,
        packages=spec.packages,
        state=res.phase,
        message=st.message,
        size_mib=st.size_mib,
        hosts=sorted(held.get(spec.digest, [])),
    )


class ImageReconciler(KindReconciler):
    """Agent: makes each image's volume in this host's pool and reports it ready."""

    kind = KIND

    def __init__(self, ctx: HostContext) -> None:
        super().__init__(ctx.store)
        self.ctx = ctx
        self._digests: dict[str, str] = {}  # image id -> digest, for forget: a purged record names neither

    def forget(self, rid: str) -> None:
        """A deleted image's volume goes unless another image has the same content (one killed agent forgets
        what it knew: `storage gc` finds those)."""
        digest = self._digests.pop(rid, None)
        if digest and not any(ImageSpec.of(r).digest == digest for r in self.records.list(KIND)):
            self.ctx.pool.delete(f"images/{digest}")
            drop_shifted(self.ctx.pool, f"images/{digest}")

    def _ready(self, res: Resource, volume: str | None) -> Result:
        if res.phase != "ready" or res.observed_generation != res.generation:
            size = self.ctx.pool.usage(volume).logical_bytes >> 20 if volume else 0
            self.records.update_status(
                res.id, phase="ready", observed_generation=res.generation, status=ImageStatus(size_mib=size).dump()
            )
            self.records.add_event(res, "Ready", "image is ready")
        return Result()

    def converge(self, res: Resource) -> Result:
        spec, volume = ImageSpec.of(res), volume_of(res)
        self._digests[res.id] = spec.digest
        source = spec.source
        if source == "busybox" and not self.ctx.compute.capabilities.real_processes:
            return self._ready(res, None)
        if self.ctx.pool.exists(volume):
            return self._ready(res, volume)
        if source == "busybox":
            _fill(self.ctx, spec.digest, _busybox_tree)
            return self._ready(res, volume)
        if source != "debootstrap":
            return Result()  # an import is unpacked when it is made; nothing to rebuild it from
        if res.phase == "failed" and res.observed_generation == res.generation:
            return Result()
        # the phase is the image's, not this host's: a host that joins later builds its copy without taking
        # "ready" away from the hosts that have one (which would then set it back, and again)
        ready = res.phase == "ready"
        if not ready:
            self.records.update_status(
                res.id, phase="building", status=ImageStatus(message="debootstrap running").dump()
            )
        self.records.add_event(
            res, "Building", f"debootstrap {spec.suite} with {spec.packages or 'minbase'} on host {self.ctx.host}"
        )
        try:
            # in this host's own directory: two hosts of one machine building the same digest must not share it
            added = self.ctx.host != self.ctx.config.host
            build = (
                (self.ctx.config.agent_dir(self.ctx.host) if added else self.ctx.config.home) / "build" / spec.digest
            )
            _fill(self.ctx, spec.digest, lambda root: _debootstrap(spec, root, build, machine_net=added))
        except DriverError as exc:
            if not ready:
                self.records.update_status(
                    res.id,
                    phase="failed",
                    observed_generation=res.generation,
                    status=ImageStatus(message=exc.message).dump(),
                )
            self.records.add_event(res, "Failed", f"on host {self.ctx.host}: {exc.message}", "Warning")
            raise TerminalError(exc.message) from exc
        self.records.add_event(res, "Built", f"image is ready on host {self.ctx.host}")
        return self._ready(res, volume)


def _debootstrap(spec: ImageSpec, root: Path, build: Path, machine_net: bool = False) -> None:
    """debootstrap refuses a target mounted nodev, as the pool is (a tenant's device node must mean nothing on
    the host): it builds in `build`, beside the pool, and the tree is copied in (once per image). machine_net: the
    agent of a host added on this machine lives in a namespace with no way out; the mirror is reached from the
    machine's own network namespace, as a real host would reach it from its own."""
    fds: tuple[int, ...] = ()
    cmd: list[str] = []
    if machine_net:
        fd = os.environ.get(MACHINE_NETNS_FD, "")
        if not fd.isdigit():
            raise DriverError(f"this agent has no handle on the machine's network ({MACHINE_NETNS_FD}): restart it")
        fds, cmd = (int(fd),), ["nsenter", f"--net=/proc/self/fd/{fd}"]
    shutil.rmtree(build, ignore_errors=True)  # what a crashed build left
    build.mkdir(parents=True)
    try:
        cmd += ["debootstrap", "--variant=minbase"]
        if spec.packages:
            cmd.append("--include=" + ",".join(spec.packages))
        cmd += [str(spec.suite), str(build), str(spec.mirror)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, pass_fds=fds)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise DriverError("debootstrap failed: " + " | ".join(tail))
        copy = subprocess.run(["cp", "-a", f"{build}/.", str(root)], capture_output=True, text=True)
        if copy.returncode != 0:
            raise DriverError(f"copying the built image into the pool failed: {copy.stderr.strip()}")
    finally:
        shutil.rmtree(build, ignore_errors=True)
