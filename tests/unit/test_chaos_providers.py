"""The http, process and python providers: outputs as chaostoolkit gives them, timeouts, aborts, substitution."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cloudlet.chaos.experiment import HttpProvider, ProcessProvider, PythonProvider
from cloudlet.chaos.providers import Aborted, run_provider
from cloudlet.chaos.variables import Variables
from cloudlet.core.errors import CloudletError

V = Variables({"who": "web-1", "n": 3}, {"db": {"password": "pw"}})


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "auth": self.headers.get("Authorization")}).encode()
        self.send_response(200 if self.path != "/down" else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # loopback only
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http(url: str) -> None:
    p = HttpProvider(type="http", url=url + "/x/${who}", headers={"Authorization": "Bearer ${password}"})
    out = run_provider(p, V, threading.Event())
    assert out["status"] == 200 and out["body"] == {"path": "/x/web-1", "auth": "Bearer pw"}
    assert run_provider(HttpProvider(type="http", url=url + "/down"), V, threading.Event())["status"] == 503
    post = HttpProvider(type="http", url=url, method="POST", arguments={"n": "${n}"})
    out = run_provider(post, V, threading.Event())
    assert (out["status"], json.loads(out["body"])) == (201, {"n": 3})


def test_http_unreachable_raises() -> None:
    p = HttpProvider(type="http", url="http://127.0.0.1:1/", timeout=1)
    with pytest.raises(Exception, match="onnect"):
        run_provider(p, V, threading.Event())


def test_process_output_timeout_and_abort() -> None:
    out = run_provider(
        ProcessProvider(type="process", path="sh", arguments=["-c", "echo $0; exit 3", "${who}"]), V, threading.Event()
    )
    assert out == {"status": 3, "stdout": "web-1\n", "stderr": ""}
    with pytest.raises(CloudletError, match="did not finish within 0.3 s"):
        run_provider(ProcessProvider(type="process", path="sleep", arguments="5", timeout=0.3), V, threading.Event())
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(Aborted):
        run_provider(ProcessProvider(type="process", path="sleep", arguments="5"), V, cancel)
    assert time.monotonic() - t0 < 3  # the sleep's 5 s, had the cancel not stopped it


def takes_both(name: str, configuration: dict[str, Any], secrets: dict[str, Any]) -> list[Any]:
    return [name, configuration["n"], secrets]


def test_python_passes_configuration_and_only_the_named_secret_scopes() -> None:
    p = PythonProvider(type="python", module=__name__, func="takes_both", arguments={"name": "${who}"}, secrets=["db"])
    assert run_provider(p, V, threading.Event()) == ["web-1", 3, {"db": {"password": "pw"}}]
    with pytest.raises(CloudletError, match="has no attribute 'nope'"):
        run_provider(PythonProvider(type="python", module=__name__, func="nope"), V, threading.Event())
