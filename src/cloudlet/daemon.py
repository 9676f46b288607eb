"""cloudletd: one process holding the API server, reconcilers, DNS server and the embedded host agent.

`cloudlet up` starts it in the background; SIGTERM stops it. Instances keep running while it is down; the next
start adopts them. `shutdown_artefacts` (used by `cloudlet down`) stops and removes what is running.
"""

from __future__ import annotations

__all__ = ["build_cloud", "bootstrap", "serve", "shutdown_artefacts", "main"]

import json
import logging
import os
import secrets
import shutil
import socket

from cloudlet.compute import images, instances
from cloudlet.compute.drivers import get_driver
from cloudlet.compute.placement import Placement, register_host
from cloudlet.core.clock import Clock, RealClock
from cloudlet.core.config import Config, load_config
from cloudlet.core.context import ADMIN_TENANT, Cloud
from cloudlet.core.reconcile import Manager
from cloudlet.core.store import Store
from cloudlet.network import networks
from cloudlet.network.plumbing import FakeNetworkDriver, LinuxNetworkDriver, NetworkDriver
from cloudlet.storage import backups, policies, volumes
from cloudlet.storage.pools import get_pool

log = logging.getLogger("cloudlet.daemon")


def build_cloud(config: Config, clock: Clock | None = None, **driver_args: object) -> Cloud:
    config.home.mkdir(parents=True, exist_ok=True)
    os.chmod(config.home, 0o700)
    clock = clock or RealClock()
    store = Store(config.db_url)
    store.migrate()
    cloud_id = config.cloud_id()
    net: NetworkDriver
    if config.compute_driver == "fake":
        compute = get_driver("fake", clock=clock, **driver_args)
        net = FakeNetworkDriver()
        pool = get_pool("memory", config.home)
    else:
        compute = get_driver(config.compute_driver, home=config.home, cloud_id=cloud_id, **driver_args)
        net = LinuxNetworkDriver(cloud_id)
        pool = get_pool(config.storage_pool, config.home)
    pool.setup()
    manager = Manager(store, clock)
    cloud = Cloud(config, store, compute, net, pool, clock, manager)
    placement = Placement(store, clock)
    cloud.extras["placement"] = placement
    manager.register(networks.NetworkReconciler(cloud))
    manager.register(images.ImageReconciler(cloud))
    manager.register(instances.InstanceReconciler(cloud, placement))
    manager.register(volumes.VolumeReconciler(cloud, restore=backups.restore_into))
    manager.register(volumes.SnapshotReconciler(cloud, restore=backups.restore_into))
    manager.register(backups.BackupReconciler(cloud))
    manager.register(policies.BackupPolicyReconciler(cloud))
    return cloud


def _host_capacity() -> tuple[int, int]:
    with open("/proc/meminfo") as f:
        total_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return os.cpu_count() or 1, total_kib // 1024


def bootstrap(cloud: Cloud) -> str:
    """Idempotent first-start work: admin token, the local host, the busybox image, the default network."""
    cfg = cloud.config
    token = cfg.token_file.read_text().strip() if cfg.token_file.exists() else ""
    if not token or cloud.store.lookup_token(token) is None:
        token = secrets.token_urlsafe(32)
        cloud.store.add_token(token, ADMIN_TENANT, "admin")
        tmp = cfg.token_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.replace(tmp, cfg.token_file)
    cpus, memory = _host_capacity()
    register_host(cloud.store, cfg.host, cfg.zone, cpus, memory)
    images.ensure_busybox(cloud)
    networks.ensure_default_network(cloud, ADMIN_TENANT)
    return token


def serve(cloud: Cloud) -> None:
    import uvicorn

    from cloudlet.api.app import create_app
    from cloudlet.network.dns import DNSService, Resolver

    cfg = cloud.config
    dns = DNSService(Resolver(cloud.store), cfg.dns_port)
    cloud.extras["dns_port"] = dns.port
    hub = cloud.net.hub_netns()
    if hub and isinstance(cloud.net, LinuxNetworkDriver):
        cloud.net.ensure_hub()
        dns.serve_hub(hub)
    cloud.compute.watch(lambda iid: cloud.manager.enqueue(instances.KIND, iid))
    cloud.manager.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((cfg.api_host, cfg.api_port))
    port = sock.getsockname()[1]
    endpoint = {"url": f"http://{cfg.api_host}:{port}", "dns_port": dns.port, "pid": os.getpid()}
    tmp = cfg.endpoint_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(endpoint))
    os.replace(tmp, cfg.endpoint_file)
    cfg.pid_file.write_text(f"{os.getpid()}\n")
    log.info("cloudletd listening on %s, DNS on 127.0.0.1:%s", endpoint["url"], dns.port)
    server = uvicorn.Server(uvicorn.Config(create_app(cloud), log_level="warning", timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    finally:
        cloud.manager.stop()
        dns.stop()
        for path in (cfg.pid_file, cfg.endpoint_file):
            path.unlink(missing_ok=True)
        log.info("cloudletd stopped")


def shutdown_artefacts(config: Config, purge: bool) -> None:
    """Stops every instance and removes namespaces, bridges, mounts, cgroups and nft tables of this cloud.

    Without purge, records and instance files stay and the next `up` starts the instances again; with purge,
    the whole state directory goes too.
    """
    if not config.home.exists():
        return
    cloud = build_cloud(config)
    try:
        if purge:
            cloud.compute.teardown()
        else:
            cloud.compute.shutdown()
            for res in cloud.store.list(instances.KIND):
                if res.status.get("state") in ("running", "starting"):
                    status = {**res.status, "state": "stopped", "run_nonce": None, "pid": None}
                    cloud.store.update_status(res.id, status=status, phase="stopped")
        cloud.net.teardown()
        cloud.pool.teardown(purge)
    finally:
        cloud.store.close()
    if purge:
        shutil.rmtree(config.home, ignore_errors=True)


def main() -> None:
    logging.basicConfig(level=os.environ.get("CLOUDLET_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cloud = build_cloud(load_config())
    bootstrap(cloud)
    serve(cloud)


if __name__ == "__main__":
    main()
