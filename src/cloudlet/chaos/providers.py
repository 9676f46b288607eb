"""The three providers of the Chaos Toolkit format, each returning an activity's output.

- `http`: one request; output `{status, headers, body}` (body parsed when the reply says JSON). A failed connection
  raises; a status is an output, checked by a tolerance (`tolerance: 200`).
- `process`: the program with its arguments (a list, or one string split as a shell would, never run by one);
  output `{status, stdout, stderr}`; killed at its timeout or when the run is aborted.
- `python`: `module.func(**arguments)`, plus `configuration=` and `secrets=` when the function takes them, as
  chaoslib does; output whatever it returns.
"""

from __future__ import annotations

__all__ = ["Aborted", "run_provider"]

import importlib
import inspect
import shlex
import shutil
import subprocess
import threading
import time
from typing import Any

from cloudlet.chaos.experiment import HttpProvider, ProcessProvider, PythonProvider
from cloudlet.chaos.variables import Variables
from cloudlet.core.errors import CloudletError


class Aborted(CloudletError):
    """The run was aborted (a safeguard) while this activity ran."""


def run_provider(
    provider: HttpProvider | ProcessProvider | PythonProvider, variables: Variables, cancel: threading.Event
) -> Any:
    if isinstance(provider, HttpProvider):
        return _http(provider, variables)
    if isinstance(provider, ProcessProvider):
        return _process(provider, variables, cancel)
    return _python(provider, variables)


def _http(p: HttpProvider, v: Variables) -> dict[str, Any]:
    import httpx

    body = v.substitute(p.arguments)
    timeout = httpx.Timeout(p.timeout[1], connect=p.timeout[0]) if isinstance(p.timeout, tuple) else p.timeout
    kwargs: dict[str, Any] = {"json": body} if isinstance(body, dict | list) else {"content": body}
    # trust_env off: a proxy from the environment would carry the request somewhere the experiment does not say
    with httpx.Client(timeout=timeout, verify=p.verify_tls, trust_env=False) as client:
        reply = client.request(p.method, v.substitute(p.url), headers=v.substitute(p.headers), **kwargs)
    try:
        parsed: Any = reply.json() if "json" in reply.headers.get("content-type", "") else reply.text
    except ValueError:
        parsed = reply.text
    return {"status": reply.status_code, "headers": dict(reply.headers), "body": parsed}


def _process(p: ProcessProvider, v: Variables, cancel: threading.Event) -> dict[str, Any]:
    args = v.substitute(p.arguments)
    argv = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
    path = shutil.which(v.substitute(p.path)) or v.substitute(p.path)
    proc = subprocess.Popen(
        [path, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    deadline = time.monotonic() + p.timeout if p.timeout else None
    while True:
        try:
            stdout, stderr = proc.communicate(timeout=0.1)  # short waits: an abort must end it within a period
            return {"status": proc.returncode, "stdout": stdout, "stderr": stderr}
        except subprocess.TimeoutExpired:
            if cancel.is_set() or (deadline is not None and time.monotonic() > deadline):
                proc.kill()
                proc.communicate()
                if cancel.is_set():
                    raise Aborted(f"{path} killed: the run was aborted") from None
                raise CloudletError(f"{path} did not finish within {p.timeout:g} s and was killed") from None


def _python(p: PythonProvider, v: Variables) -> Any:
    try:
        func = getattr(importlib.import_module(p.module), p.func)
    except (ImportError, AttributeError) as exc:
        raise CloudletError(f"python provider {p.module}.{p.func}: {exc}") from None
    kwargs = v.substitute(p.arguments)
    params = inspect.signature(func).parameters
    if "configuration" in params:
        kwargs["configuration"] = v.configuration
    if "secrets" in params:
        kwargs["secrets"] = v.scoped(p.secrets)
    return func(**kwargs)
