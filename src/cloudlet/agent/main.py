"""`cloudlet agent`: run one host's agent in the foreground (`cloudlet up` daemonises the one for `local`).

cloudlet agent --host NAME --zone ZONE --api URL --token-file F
"""

from __future__ import annotations

__all__ = ["run_agent", "host_capacity"]

import json
import logging
import os
from pathlib import Path

from cloudlet.agent.agent import Agent
from cloudlet.agent.transport import HttpControlPlane
from cloudlet.compute.drivers import get_driver
from cloudlet.core.clock import RealClock
from cloudlet.core.config import Config, load_config
from cloudlet.core.errors import CloudletError
from cloudlet.core.ports import choose_port, listening_socket
from cloudlet.network.drivers import get_network_driver
from cloudlet.network.underlay import host_netns
from cloudlet.storage.pools import get_pool

log = logging.getLogger("cloudlet.agent")


def host_capacity() -> tuple[int, int]:
    with open("/proc/meminfo") as f:
        total_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return os.cpu_count() or 1, total_kib // 1024


def build_agent(config: Config, host: str, zone: str, api: str, token: str) -> Agent:
    state_dir = config.agent_dir(host)
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    cloud_id = config.cloud_id()
    # an added host keeps its runc state and pool in its own directory and names its namespaces after itself
    added = host != config.host
    data = state_dir if added else config.home
    if config.compute_driver == "fake":
        compute = get_driver("fake")
        net = get_network_driver("fake")
        pool = get_pool("memory", data)
    else:
        compute = get_driver(config.compute_driver, home=data, cloud_id=cloud_id)
        host_ns = host_netns(cloud_id, host) if added else None
        net = get_network_driver("linux", cloud_id=cloud_id, home=config.home, host_ns=host_ns)
        pool = get_pool(config.storage_pool, data)
    return Agent(
        config,
        HttpControlPlane(api, token),
        host,
        zone,
        RealClock(),
        compute,
        net,
        pool,
        state_dir,
        capacity=host_capacity(),
    )


def _write_private(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def run_agent(
    host: str,
    zone: str,
    api: str,
    token_file: Path,
    shutdown: bool = False,
    purge: bool = False,
    listen: str = "127.0.0.1",
) -> None:
    import uvicorn

    from cloudlet.agent.server import create_agent_app
    from cloudlet.network.dns import DNSService, Resolver
    from cloudlet.network.metadata import MetadataService

    logging.basicConfig(
        level=os.environ.get("CLOUDLET_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per heartbeat is noise
    config = load_config()
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise CloudletError(f"cannot read the host token {token_file}: {exc.strerror}") from None
    agent = build_agent(config, host, zone, api, token)
    if shutdown:  # `cloudlet down` when this host's agent is not running: clean up from its disk cache
        agent.cache.load()
        agent.shutdown_host(purge)
        return
    state_dir = config.agent_dir(host)
    endpoint_file = state_dir / "endpoint.json"
    before = config.endpoint(endpoint_file)
    dns_port = choose_port(
        before.get("dns_port"), config.dns_port, "DNS", "CLOUDLET_DNS_PORT", config.explicit_ports, udp=True
    )
    resolver = Resolver(agent.cache)
    dns = DNSService(resolver, dns_port)
    agent.dns_port = dns.port
    metadata = MetadataService(agent.cache, zone)
    sock = listening_socket(choose_port(before.get("port"), 0, "agent", host=listen), host=listen)
    port = sock.getsockname()[1]
    agent.endpoint = f"http://{listen}:{port}"
    agent.start()
    hub = agent.ctx.net.hub_netns()
    if hub:
        agent.ctx.net.ensure_hub()
        dns.serve_hub(hub)
        metadata.serve_hub(hub)
    _write_private(
        endpoint_file,
        {"url": agent.endpoint, "port": port, "key": agent.key, "dns_port": dns.port, "pid": os.getpid(), "host": host},
    )
    (state_dir / "agent.pid").write_text(f"{os.getpid()}\n")
    log.info("agent %s in %s serving on %s, DNS on 127.0.0.1:%s", host, zone, agent.endpoint, dns.port)
    app = create_agent_app(agent, state_dir, lambda: setattr(server, "should_exit", True))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    finally:
        agent.stop()
        dns.stop()
        metadata.stop()
        (state_dir / "agent.pid").unlink(missing_ok=True)
        log.info("agent %s stopped", host)
