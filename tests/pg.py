"""A throw-away PostgreSQL server (Debian's binaries, own data dir and port, run as the postgres user)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres() -> Iterator[str]:
    bindir = pg_bin()
    assert bindir, "PostgreSQL is not installed (make install adds it)"
    user = pwd.getpwnam("postgres")
    data = tempfile.mkdtemp(prefix="cloudlet-pg-")
    os.chown(data, user.pw_uid, user.pw_gid)
    port = _free_port()

    def as_pg(*cmd: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, cwd=data)

    try:
        as_pg(f"{bindir}/initdb", "-D", f"{data}/db", "-A", "trust", "-U", "cloudlet")
        as_pg(
            f"{bindir}/pg_ctl",
            "-D",
            f"{data}/db",
            "-w",
            "-l",
            f"{data}/log",
            "-o",
            f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )
        yield f"postgresql+psycopg://cloudlet@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                f"{bindir}/pg_ctl",
                "-D",
                f"{data}/db",
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(data, ignore_errors=True)
