"""Image kind: root filesystems instances boot from, content-addressed by digest.

Sources: `busybox` (always present, from Debian's busybox-static), `debootstrap` (Debian from the mirror apt
already uses, cached by suite+packages+mirror), `import` (a rootfs tarball). Images are public: every tenant
can launch them. Each image is a read-only pool volume `images/<digest>` in every host's pool, made by that
host's agent (an import is handed to the agents by the control plane); instance root disks are its clones.
"""

from __future__ import annotations

__all__ = [
    "KIND",
    "BUSYBOX_COMMAND",
    "ensure_busybox",
    "request_build",
    "import_image",
    "image_view",
    "ImageReconciler",
    "volume_of",
    "get_image",
    "ImageBuild",
    "uploads_dir",
    "unpack_import",
]

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloudlet.compute.resource import HOST, IMAGE, ImageSpec, ImageStatus
from cloudlet.core.context import PUBLIC_TENANT, Caller, Cloud, HostContext
from cloudlet.core.errors import BadRequest, Conflict, DriverError, InvalidSpec, NotFound, TerminalError
from cloudlet.core.labels import Labels
from cloudlet.core.reconcile import KindReconciler, Result
from cloudlet.core.records import Name, Resource, check_name, record_view

KIND = IMAGE
BUSYBOX = Path("/bin/busybox")
BUSYBOX_COMMAND = [
    "/bin/sh",
    "-c",
    'mkdir -p /var/www && echo "hello from $(hostname)" > /var/www/index.html && exec httpd -f -p 80 -h /var/www',
]
DEBIAN_COMMAND = ["/bin/sh", "-c", "exec sleep infinity"]
SUITES = {"debian-12": "bookworm"}
_lock = threading.Lock()
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


def _record(
    cloud: Cloud, name: str, spec: dict[str, Any], phase: str, labels: dict[str, str] | None = None
) -> Resource:
    res = Resource(kind=KIND, tenant=PUBLIC_TENANT, name=name, spec=spec, phase=phase, labels=labels or {})
    cloud.store.create(res, created=f"image {name} from {ImageSpec.of(res).source}")
    return res


def ensure_busybox(cloud: Cloud) -> Resource:
    """The built-in image's record; each agent fills it from its host's busybox-static (simulated hosts need no
    files: their fake driver reads none)."""
    real = cloud.config.compute_driver != "fake"
    digest = "busybox-" + (hashlib.sha256(BUSYBOX.read_bytes()).hexdigest()[:16] if real else "sim")
    spec = ImageSpec(source="busybox", digest=digest, command=BUSYBOX_COMMAND).dump()
    with _lock:
        for res in cloud.store.list(KIND, name="busybox"):
            if ImageSpec.of(res).digest != digest:
                cloud.store.update_spec(res.id, spec)
            return res
        return _record(cloud, "busybox", spec, "pending")


def request_build(cloud: Cloud, caller: Caller, req: ImageBuild) -> Resource:
    check_name("image", req.name)
    base = req.name if req.name in SUITES else "debian-12"
    suite = SUITES[base]
    mirror = cloud.config.debian_mirror
    key = json.dumps({"suite": suite, "packages": req.packages, "mirror": mirror}, sort_keys=True)
    digest = f"{base}-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    spec = ImageSpec(
        source="debootstrap", suite=suite, packages=req.packages, mirror=mirror, digest=digest, command=DEBIAN_COMMAND
    ).dump()
    for res in cloud.store.list(KIND, name=req.name):
        if ImageSpec.of(res).digest == digest and res.phase != "failed":
            return res  # same content: the build is cached
        return cloud.store.update_spec(res.id, spec)
    return _record(cloud, req.name, spec, "pending", req.labels)


def import_image(cloud: Cloud, caller: Caller, name: str, tarball: Path) -> Resource:
    """Hands a rootfs tarball to every host's agent to unpack; the image's digest is the tarball's sha256."""
    check_name("image", name)
    if cloud.store.list(KIND, name=name):
        raise Conflict(f"image {name!r} already exists; import under another name")
    h = hashlib.sha256()
    with open(tarball, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    digest = "import-" + h.hexdigest()[:16]
    for host in cloud.store.list(HOST):
        cloud.hosts.agent(host.name).import_image(digest, tarball)
    return _record(cloud, name, ImageSpec(source="import", digest=digest, command=DEBIAN_COMMAND).dump(), "ready")


def unpack_import(ctx: HostContext, digest: str, tarball: Path) -> None:
    """Agent side of an import: the tarball becomes the sealed pool volume of the image."""

    def unpack(root: Path) -> None:
        try:
            with tarfile.open(tarball) as tf:
                tf.extractall(root, filter="tar")
        except (tarfile.TarError, OSError) as exc:
            raise BadRequest(f"could not unpack the image: {exc}; give a rootfs .tar (optionally gzip)") from exc
        if not (root / "bin/sh").exists() and not (root / "bin").is_symlink():
            raise InvalidSpec("the tarball has no /bin/sh; an image must be a root filesystem")

    _fill(ctx, digest, unpack)


def get_image(cloud: Cloud, name: str) -> Resource:
    try:
        return cloud.store.get(KIND, PUBLIC_TENANT, name)
    except NotFound:
        names = ", ".join(sorted(r.name for r in cloud.store.list(KIND))) or "none"
        raise NotFound(f"image {name!r} not found; available images: {names}") from None


def image_view(res: Resource) -> dict[str, object]:
    spec, st = ImageSpec.of(res), ImageStatus.of(res)
    return record_view(
        res,
        source=spec.source,
        digest=spec.digest,
        packages=spec.packages,
        state=res.phase,
        message=st.message,
        size_mib=st.size_mib,
    )


class ImageReconciler(KindReconciler):
    """Agent: makes each image's volume in this host's pool and reports it ready."""

    kind = KIND

    def __init__(self, ctx: HostContext) -> None:
        super().__init__(ctx.store)
        self.ctx = ctx

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
        self.records.update_status(res.id, phase="building", status=ImageStatus(message="debootstrap running").dump())
        self.records.add_event(res, "Building", f"debootstrap {spec.suite} with {spec.packages or 'minbase'}")
        try:
            _fill(self.ctx, spec.digest, lambda root: _debootstrap(spec, root))
        except DriverError as exc:
            self.records.update_status(
                res.id,
                phase="failed",
                observed_generation=res.generation,
                status=ImageStatus(message=exc.message).dump(),
            )
            self.records.add_event(res, "Failed", exc.message, "Warning")
            raise TerminalError(exc.message) from exc
        return self._ready(res, volume)


def _debootstrap(spec: ImageSpec, root: Path) -> None:
    cmd = ["debootstrap", "--variant=minbase"]
    if spec.packages:
        cmd.append("--include=" + ",".join(spec.packages))
    cmd += [str(spec.suite), str(root), str(spec.mirror)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise DriverError("debootstrap failed: " + " | ".join(tail))
