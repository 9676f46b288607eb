"""cloudletd: the control plane. It holds the API server, the store, the scheduler and the cluster-wide
controllers; it never touches runc, namespaces or a storage pool (each host's agent does, see agent/).

`cloudlet up` starts it in the background beside the agent of host `local`; SIGTERM or POST /v1/shutdown
stops it. Instances and name service keep running while it is down; agents resync when it is back.
"""

from __future__ import annotations

__all__ = ["build_control_plane", "bootstrap", "serve", "main"]

import json
import logging
import os
import secrets
import threading
from types import FrameType

from cloudlet.agent.client import HttpHosts
from cloudlet.compute import images
from cloudlet.compute.hosts import AgentService, host_token
from cloudlet.compute.instances import KIND as INSTANCE
from cloudlet.compute.placement import Placement
from cloudlet.compute.scheduler import release
from cloudlet.core.clock import Clock, RealClock
from cloudlet.core.config import Config, load_config
from cloudlet.core.context import ADMIN_TENANT, Cloud, HostDirectory
from cloudlet.core.errors import CloudletError
from cloudlet.core.ports import choose_port, listening_socket
from cloudlet.core.reconcile import Manager
from cloudlet.core.records import Resource
from cloudlet.core.store import Store
from cloudlet.domains import DOMAINS
from cloudlet.network import networks
from cloudlet.network.underlay import Underlay

log = logging.getLogger("cloudlet.daemon")


def build_control_plane(config: Config, clock: Clock | None = None, hosts: HostDirectory | None = None) -> Cloud:
    config.home.mkdir(parents=True, exist_ok=True)
    # private, but keep the search bits the runc driver adds (a user namespace's root walks to its root disk):
    # a restarted cloudletd must not take them away from the running agent's instances
    os.chmod(config.home, 0o700 | (os.stat(config.home).st_mode & 0o011))
    clock = clock or RealClock()
    store = Store(config.db_url)
    store.migrate()
    manager = Manager(store, clock)
    cloud = Cloud(config, store, clock, manager, Placement(store, clock), hosts or HttpHosts(store))

    def on_purged(res: Resource) -> None:
        if res.kind == INSTANCE:
            release(cloud, res)

    cloud.agent_api = AgentService(store, on_purged, clock, config.lease_s)
    for domain in DOMAINS:
        for make in domain.control_plane:
            manager.register(make(cloud))
    return cloud


def bootstrap(cloud: Cloud) -> str:
    """Idempotent first-start work: admin token, the local host's agent token, the busybox image, the default
    network."""
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
    host_token(cloud.store, cfg.host, cfg.host_token_file(cfg.host))
    images.ensure_busybox(cloud)
    images.discard_stale_uploads(cloud)
    networks.ensure_default_network(cloud, ADMIN_TENANT)
    return token


def _compact(cloud: Cloud, stop: threading.Event) -> None:
    """At start and every minute: purges records a kill left deleting with no finalizer, bounds the logs."""
    while True:
        try:
            if purged := cloud.store.purge_finalized():
                log.info("purged %d deleted records that had no finalizer left", purged)
            cloud.store.compact_changes()
            cloud.store.compact_events()
        except Exception as exc:  # the next round tries again
            log.warning("compacting the store failed: %s", exc)
        if stop.wait(60):
            return


def serve(cloud: Cloud) -> None:
    import uvicorn

    from cloudlet.api.app import create_app

    cfg = cloud.config
    before = cfg.endpoint()
    sock = listening_socket(
        choose_port(before.get("port"), cfg.api_port, "API", "CLOUDLET_API_PORT", cfg.explicit_ports)
    )
    port = sock.getsockname()[1]
    sockets = [sock]
    endpoint: dict[str, object] = {"url": f"http://{cfg.api_host}:{port}", "port": port, "pid": os.getpid()}
    if cfg.compute_driver != "fake":  # added hosts' agents reach the API over the underlay (network/underlay.py)
        address = Underlay(cfg.cloud_id(), cfg.home).control_address
        sockets.append(listening_socket(port, address, freebind=True))
        endpoint["underlay_url"] = f"http://{address}:{port}"
    cloud.manager.start()
    stop = threading.Event()
    threading.Thread(target=_compact, args=(cloud, stop), name="compact", daemon=True).start()
    tmp = cfg.endpoint_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(endpoint))
    os.replace(tmp, cfg.endpoint_file)
    cfg.pid_file.write_text(f"{os.getpid()}\n")
    log.info("cloudletd listening on %s", endpoint["url"])
    app = create_app(cloud)
    watch = cloud.agent_api.watch

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            watch.close()  # agents' long polls answer now instead of holding the exit up to its grace time
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))

    def shutdown() -> None:  # POST /v1/shutdown: as a signal would, without one to raise again at the end
        watch.close()
        server.should_exit = True

    app.state.shutdown = shutdown
    try:
        server.run(sockets=sockets)
    finally:
        stop.set()
        cloud.manager.stop()
        cfg.pid_file.unlink(missing_ok=True)
        log.info("cloudletd stopped")


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("CLOUDLET_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cloud = build_control_plane(load_config())
        bootstrap(cloud)
        serve(cloud)
    except CloudletError as exc:  # the last line of the log is what `cloudlet up` shows
        log.error("%s", exc.message)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
