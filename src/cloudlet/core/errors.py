"""One error tree for the whole of cloudlet, mapped to HTTP (api/app.py) and CLI (cli/client.py) in one place.

CloudletError (500, "internal")
├── BadRequest (400, "bad_request")        malformed input, name mismatch
├── Unauthorized (401, "unauthorized")     missing or unknown token
├── Forbidden (403, "forbidden")           token valid but the action needs admin
├── NotFound (404, "not_found")            missing, or owned by another tenant
├── Conflict (409, "conflict")             duplicate name, resource in use
├── InvalidSpec (422, "invalid_spec")      well-formed but impossible (memory beyond any host)
├── PayloadTooLarge (413, "payload_too_large")  a request body over the limit
├── TooManyRequests (429, "too_many_requests")  over a concurrency limit (execs of a tenant): retry later
├── NotSupported (501, "not_supported")    the driver cannot do this
├── DriverError (502, "driver_error")      a real component (runc, netlink, nft) failed
├── Unreachable (503, "unreachable")       the control plane or a host's agent does not answer
└── TerminalError (422, "terminal")        a reconciler gives up retrying: the spec can never converge
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator

__all__ = [
    "CloudletError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "InvalidSpec",
    "PayloadTooLarge",
    "TooManyRequests",
    "NotSupported",
    "DriverError",
    "Unreachable",
    "TerminalError",
    "ERRORS_BY_CODE",
    "translate_errors",
]


class CloudletError(Exception):
    status_code = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(CloudletError):
    status_code, code = 400, "bad_request"


class Unauthorized(CloudletError):
    status_code, code = 401, "unauthorized"


class Forbidden(CloudletError):
    status_code, code = 403, "forbidden"


class NotFound(CloudletError):
    status_code, code = 404, "not_found"


class Conflict(CloudletError):
    status_code, code = 409, "conflict"


class InvalidSpec(CloudletError):
    status_code, code = 422, "invalid_spec"


class PayloadTooLarge(CloudletError):
    status_code, code = 413, "payload_too_large"


class TooManyRequests(CloudletError):
    status_code, code = 429, "too_many_requests"


class NotSupported(CloudletError):
    status_code, code = 501, "not_supported"


class DriverError(CloudletError):
    status_code, code = 502, "driver_error"


class Unreachable(CloudletError):
    status_code, code = 503, "unreachable"


class TerminalError(CloudletError):
    status_code, code = 422, "terminal"


ERRORS_BY_CODE: dict[str, type[CloudletError]] = {
    cls.code: cls
    for cls in (
        CloudletError,
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        InvalidSpec,
        PayloadTooLarge,
        TooManyRequests,
        NotSupported,
        DriverError,
        Unreachable,
        TerminalError,
    )
}


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn subprocess, netlink and OS failures into DriverError naming the step that failed."""
    try:
        yield
    except CloudletError:
        raise
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip() if isinstance(exc.stderr, bytes) else exc.stderr
        raise DriverError(f"{what}: {detail or exc}") from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise DriverError(f"{what}: {exc}") from exc
    except Exception as exc:  # pyroute2 NetlinkError and friends
        raise DriverError(f"{what}: {exc}") from exc
