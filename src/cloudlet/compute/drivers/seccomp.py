"""The container ecosystem's default seccomp profile (Podman's, shipped by Debian's golang-github-containers-common),
turned into the OCI runtime-spec form runc reads.

The file is in the Docker/Podman format: rules may apply only to some architectures or only when the container
holds (or lacks) a capability. Those conditions are resolved here, once per capability set, the way Docker and
Podman resolve them, so an instance gets exactly the rules the ecosystem would give a container with its caps.
"""

from __future__ import annotations

__all__ = ["PROFILE", "oci_profile"]

import functools
import json
import platform
from pathlib import Path
from typing import Any

from cloudlet.core.errors import DriverError

PROFILE = Path("/usr/share/containers/seccomp.json")
# Podman's profile lets a container make namespaces of its own (rootless nesting); Docker's does not without
# CAP_SYS_ADMIN, and nor do we: a nested user namespace hands a tenant the kernel's userns attack surface.
NS_FLAGS = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
NO_NEW_NAMESPACES: list[dict[str, Any]] = [
    {
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": NS_FLAGS, "op": "SCMP_CMP_MASKED_EQ"}],
    },
    {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},  # ENOSYS: libc falls back to clone
    {"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
]
TIGHTENED = {n for rule in NO_NEW_NAMESPACES for n in rule["names"]}
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}  # the profile names architectures as Go does
SECCOMP_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}


def _applies(rule: dict[str, Any], caps: frozenset[str], arch: str) -> bool:
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if exc.get("arches") and arch in exc["arches"]:
        return False
    return not (exc.get("caps") and set(exc["caps"]) & caps)


@functools.cache
def oci_profile(caps: frozenset[str], path: Path = PROFILE) -> dict[str, Any]:
    machine = platform.machine()
    try:
        src = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        # never start an instance unconfined because the profile went missing
        raise DriverError(f"the seccomp profile {path} is unreadable ({exc}); run 'make install'") from exc
    # The native ABI only: 32-bit syscalls (x86, x32, arm) are refused, as the images are 64-bit. Each extra ABI
    # is one more filter runc compiles at every start (the three of x86_64 cost 20 ms of a 45 ms start) and one
    # more kernel entry path with its own history of bugs.
    native = SECCOMP_ARCH.get(machine)
    if native is None:
        raise DriverError(f"no seccomp architecture known for {machine}")
    arches = [native]
    rules = []
    for rule in src["syscalls"]:
        if not _applies(rule, caps, GO_ARCH.get(machine, machine)):
            continue
        names = [n for n in rule["names"] if n not in TIGHTENED]
        if not names:
            continue
        out: dict[str, Any] = {"names": names, "action": rule["action"]}
        if rule.get("args"):
            out["args"] = [{k: a[k] for k in ("index", "value", "valueTwo", "op")} for a in rule["args"]]
        if "errnoRet" in rule:
            out["errnoRet"] = rule["errnoRet"]
        rules.append(out)
    rules += NO_NEW_NAMESPACES
    profile: dict[str, Any] = {"defaultAction": src["defaultAction"], "architectures": arches, "syscalls": rules}
    if "defaultErrnoRet" in src:
        profile["defaultErrnoRet"] = src["defaultErrnoRet"]
    return profile
