"""runc container driver: an OCI bundle per instance whose root is the instance's root disk (a pool clone of
its image, made by the caller), init = tini.

Artefacts of instance <id>, all named from the id so repair can match them to records:
  $CLOUDLET_HOME/instances/<id>/{config.json,etc,seed,runner,console.log,runc.log} (seed: its NoCloud seed)
  runc container cl-<id> under the runc root $CLOUDLET_HOME/runc
  cgroup /cloudlet-<cloud>/<id> in every v1 controller (and the unified tree, for PSI)
"""

from __future__ import annotations

__all__ = ["RuncDriver"]

import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudlet.compute.drivers.base import (
    USERNS_IDS,
    Capabilities,
    ComputeDriver,
    ConsolePage,
    ExecResult,
    InstanceInfo,
    InstanceState,
    LaunchSpec,
    console_page,
    exec_output,
)
from cloudlet.compute.drivers.seccomp import oci_profile
from cloudlet.compute.seed import NETWORK_CONFIG, RUNNER, RUNNER_DIR, RUNNER_PATH, SEED_DIR, VENDOR_DATA
from cloudlet.core.beneath import DIR_FLAGS, open_dir, parts_of
from cloudlet.core.errors import Conflict, DriverError, translate_errors

log = logging.getLogger("cloudlet.runc")

STATE_MAP = {
    "running": InstanceState.RUNNING,
    "created": InstanceState.STOPPED,
    "stopped": InstanceState.STOPPED,
    "paused": InstanceState.PAUSED,
    "pausing": InstanceState.PAUSED,
}
INIT = "/sbin/cloudlet-init"
TINI = "/usr/bin/tini-static"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Docker's default set without CAP_NET_RAW (no raw sockets, no packet spoofing; ping works through
# net.ipv4.ping_group_range, set in every instance's namespace by the network driver)
CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
CONSOLE_MAX = 4 << 20  # console.log is rotated past this (one old generation is kept, also at most this)
ROTATE_EVERY = 1.0  # seconds between size checks: between two, a log can outgrow CONSOLE_MAX by what is printed
MASKED = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",  # RAPL energy counters leak what other tenants compute
]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def _check_mount_path(rootfs: Path, dst: str) -> None:
    """runc resolves a mount's destination inside the root, following the symlinks it meets there, and the root
    disk is the tenant's: a symlink (made while running) on the way of a volume's path would put the volume
    wherever it points at the next start, e.g. over /dev, /proc or /etc, which attach refuses. So every existing
    component must be a real directory, opened without following anything; missing ones runc makes."""
    try:
        parts = parts_of(dst)
    except ValueError as exc:
        raise DriverError(f"volume path {dst} has a '..' component") from exc
    root = os.open(rootfs, DIR_FLAGS)
    try:
        os.close(open_dir(root, parts))
    except FileNotFoundError:
        pass
    except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file
        raise DriverError(
            f"volume path {dst} goes through {exc.filename!r}, which is a symlink or a file in the root disk; "
            "the volume is not mounted through it (detach it, or remove that entry)"
        ) from exc
    finally:
        os.close(root)


class RuncDriver(ComputeDriver):
    name = "runc"
    capabilities = Capabilities(exec=True, console=True, real_processes=True)

    def __init__(self, home: Path, cloud_id: str) -> None:
        self.home = home
        self.cloud_id = cloud_id
        self.dir = home / "instances"
        self.root = home / "runc"
        self.cgroup_parent = f"cloudlet-{cloud_id}"
        self.dir.mkdir(parents=True, exist_ok=True)
        # a user namespace's root is "other" to host files: it must be able to walk to its root disk and its
        # per-instance files (it can list none of the directories on the way)
        os.chmod(home, os.stat(home).st_mode | 0o011)
        self._watch: dict[int, str] = {}
        self._watched: dict[str, int] = {}
        self._sel: selectors.BaseSelector | None = None
        self._on_exit: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        # the runtime and the volume reconciler may attach the same volume at once: helpers run one at a time
        self._mount_lock = threading.Lock()

    # interface, in base-class order
    def create_instance(self, spec: LaunchSpec) -> InstanceInfo:
        info = self.get_instance(spec.id)
        return info if info.state == InstanceState.RUNNING else self.start_instance(spec)

    def start_instance(self, spec: LaunchSpec) -> InstanceInfo:
        d = self.dir / spec.id
        with translate_errors(f"preparing instance {spec.id}"):
            self._prepare(spec)
        if self._known_to_runc(spec.id):
            self._runc("delete", "--force", self._cid(spec.id), check=False)
        # create, wire the new netns up, then start: init never runs without its network
        self._link_console(d, spec.console)
        with open(d / "console.log", "ab") as console:
            proc = subprocess.run(
                [
                    "runc",
                    "--root",
                    str(self.root),
                    "--log",
                    str(d / "runc.log"),
                    "create",
                    "--pid-file",
                    str(d / "init.pid"),
                    "-b",
                    str(d),
                    self._cid(spec.id),
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=console,
                timeout=60,
            )
        if proc.returncode != 0:
            raise DriverError(f"runc could not create instance {spec.id}: {self._last_runc_error(d)}")
        pid = int((d / "init.pid").read_text())
        try:
            if spec.plumb is not None:
                spec.plumb(pid)
            self._runc("start", self._cid(spec.id))
        except BaseException:
            self._runc("delete", "--force", self._cid(spec.id), check=False)
            raise
        if not Path(f"/proc/{pid}").exists():
            return self.get_instance(spec.id)
        self._track(spec.id, pid)
        return InstanceInfo(spec.id, InstanceState.RUNNING, pid, {"runc_status": "running"})

    def stop_instance(self, iid: str, timeout: float = 5.0) -> None:
        cid = self._cid(iid)
        if not self._known_to_runc(iid):
            return
        if self.get_instance(iid).state == InstanceState.RUNNING:
            self._runc("kill", cid, "TERM", check=False)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.get_instance(iid).state == InstanceState.RUNNING:
                time.sleep(0.02)
            pid = self.get_instance(iid).pid
            self._runc("kill", "--all", cid, "KILL", check=False)
            while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline + 5:
                time.sleep(0.01)  # the kernel kills the rest of the pid namespace with its init
        self._runc("delete", "--force", cid, check=False)

    def delete_instance(self, iid: str) -> None:
        d = self.dir / iid
        self.stop_instance(iid, timeout=0)
        self._link_console(d, None)
        shutil.rmtree(d, ignore_errors=True)
        self._remove_cgroups(iid)

    def get_instance(self, iid: str) -> InstanceInfo:
        proc = self._runc("state", self._cid(iid), check=False) if self._known_to_runc(iid) else None
        if proc is None or proc.returncode != 0:
            state = InstanceState.STOPPED if (self.dir / iid).exists() else InstanceState.MISSING
            return InstanceInfo(iid, state)
        data = json.loads(proc.stdout)
        state = STATE_MAP.get(data.get("status", ""), InstanceState.STOPPED)
        pid = int(data.get("pid") or 0) or None
        if state == InstanceState.RUNNING and pid:
            self._track(iid, pid)
        return InstanceInfo(
            iid, state, pid if state == InstanceState.RUNNING else None, {"runc_status": data.get("status")}
        )

    def list_instances(self) -> set[str]:
        ids = {p.name for p in self.dir.iterdir() if p.is_dir()}
        if self.root.exists():
            ids |= {p.name[3:] for p in self.root.iterdir() if p.name.startswith("cl-")}
        return ids

    def exec_instance(
        self, iid: str, argv: list[str], timeout: float = 60.0, output_limit: int = 1 << 20
    ) -> ExecResult:
        if self.get_instance(iid).state != InstanceState.RUNNING:
            raise Conflict("instance is not running; start it first")
        with translate_errors(f"exec in instance {iid}"):
            proc = subprocess.Popen(
                ["runc", "--root", str(self.root), "exec", self._cid(iid), *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # the sessions _kill_exec kills: runc's own, and the command's
            )
        finished = False
        try:
            kept, printed, finished = self._read_capped(proc, time.monotonic() + timeout, output_limit)
        finally:
            if not finished:  # timed out (or this thread failed): nothing of the command may outlive the answer
                self._kill_exec(proc.pid)
            proc.wait()
            assert proc.stdout and proc.stderr
            proc.stdout.close()
            proc.stderr.close()
        out, err = (exec_output(k, n) for k, n in zip(kept, printed, strict=True))
        truncated = any(n > len(k) for k, n in zip(kept, printed, strict=True))
        if not finished:  # 124, as timeout(1) says it: a result, not a failure of ours
            err += f"command did not finish within {timeout:g} s and was killed\n"
            return ExecResult(124, out, err, truncated)
        return ExecResult(proc.returncode, out, err, truncated)

    def console_log(self, iid: str, offset: int | None = None, limit: int = 65536) -> ConsolePage:
        try:
            with open(self.dir / iid / "console.log", "rb") as f:
                return console_page(f, os.fstat(f.fileno()).st_size, offset, limit)
        except FileNotFoundError:
            return ConsolePage("", 0, 0, 0)

    @staticmethod
    def _read_capped(proc: subprocess.Popen[bytes], deadline: float, limit: int) -> tuple[list[bytes], list[int], bool]:
        """Reads stdout and stderr as they come until both end and the command exits, or the deadline: keeps the
        first `limit` bytes of each and counts the rest, so memory stays bounded whatever the command prints
        (draining rather than killing at the cap: a command that is merely verbose still does its work).
        Returns what was kept, how much was printed, and whether it finished in time."""
        assert proc.stdout and proc.stderr
        kept, printed = [bytearray(), bytearray()], [0, 0]
        with selectors.DefaultSelector() as sel:
            for i, pipe in enumerate((proc.stdout, proc.stderr)):
                sel.register(pipe.fileno(), selectors.EVENT_READ, i)
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    return [bytes(k) for k in kept], printed, False
                for key, _ in sel.select(left):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    i = key.data
                    printed[i] += len(chunk)
                    kept[i] += chunk[: max(0, limit - len(kept[i]))]
        try:  # both streams closed; the command may still run
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return [bytes(k) for k in kept], printed, False
        return [bytes(k) for k in kept], printed, True

    @staticmethod
    def _kill_exec(runc_pid: int) -> None:
        """Kills `runc exec` and what it started in the container. runc makes the command a session leader and,
        as a child subreaper, its parent: the sessions of runc's descendants hold the command, its children and
        the background jobs that outlived their parent (reparented to the container's init); runc's own session
        is the one Popen started. Repeated until nothing is left, as a dying process may still be forking."""
        for _ in range(20):
            table = {}  # pid -> (ppid, session) of every live process
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/stat") as f:
                        fields = f.read().rpartition(")")[2].split()
                except OSError:
                    continue  # gone meanwhile
                if fields[0] != "Z":
                    table[int(entry.name)] = (int(fields[1]), int(fields[3]))
            tree, grew = {runc_pid}, True
            while grew:
                found = {pid for pid, (ppid, _) in table.items() if ppid in tree} - tree
                tree |= found
                grew = bool(found)
            sessions = {runc_pid} | {table[pid][1] for pid in tree if pid in table}
            victims = [pid for pid, (_, sid) in table.items() if pid in tree or sid in sessions]
            if not victims:
                return
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
        log.warning("processes of exec %d still alive after repeated SIGKILL", runc_pid)

    def attach_volume(self, iid: str, source: Path, path: str) -> None:
        self._own(source, self._uid_base(iid))
        self._mountns("attach", iid, str(source), path)

    def detach_volume(self, iid: str, source: Path, path: str) -> None:
        self._mountns("detach", iid, str(source))

    def _mountns(self, verb: str, iid: str, *paths: str) -> None:
        with self._mount_lock:
            info = self.get_instance(iid)
            if info.state != InstanceState.RUNNING or not info.pid:
                return  # not running: config.json carries the mounts at the next start
            proc = subprocess.run(
                [sys.executable, "-m", "cloudlet.compute.drivers.mountns", verb, str(info.pid), *paths],
                capture_output=True,
                text=True,
                timeout=30,
            )
        if proc.returncode != 0:
            raise DriverError(f"could not {verb} volume {Path(paths[0]).name}: {proc.stderr.strip()}")

    def pause_instance(self, iid: str) -> bool:
        if self.get_instance(iid).state != InstanceState.RUNNING:
            return False
        self._runc("pause", self._cid(iid))  # cgroup freezer: no process runs while the disk is snapshotted
        return True

    def resume_instance(self, iid: str) -> None:
        self._runc("resume", self._cid(iid), check=False)

    def stats(self, iid: str) -> dict[str, Any]:
        cg = f"{self.cgroup_parent}/{iid}"
        out: dict[str, Any] = {}
        for key, path in (
            ("memory_bytes", CGROUP_ROOT / "memory" / cg / "memory.usage_in_bytes"),
            ("memory_limit_bytes", CGROUP_ROOT / "memory" / cg / "memory.limit_in_bytes"),
            ("cpu_ns", CGROUP_ROOT / "cpuacct" / cg / "cpuacct.usage"),
            ("cpu_quota_us", CGROUP_ROOT / "cpu" / cg / "cpu.cfs_quota_us"),
            ("pids", CGROUP_ROOT / "pids" / cg / "pids.current"),
        ):
            try:
                out[key] = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        for res in ("cpu", "memory", "io"):
            try:
                line = (CGROUP_ROOT / "unified" / cg / f"{res}.pressure").read_text().splitlines()[0]
                out[f"{res}_pressure_avg10"] = float(line.split()[1].split("=")[1])
            except (OSError, ValueError, IndexError):
                pass
        return out

    def watch(self, on_exit: Callable[[str], None]) -> None:
        self._on_exit = on_exit
        self._sel = selectors.DefaultSelector()
        threading.Thread(target=self._watch_loop, name="runc-watch", daemon=True).start()

    def shutdown(self) -> None:
        for iid in self.list_instances():
            self.stop_instance(iid)
            self._remove_cgroups(iid)
        self._remove_cgroup_parent()

    def teardown(self) -> None:
        for iid in self.list_instances():
            self.delete_instance(iid)
        self._remove_cgroup_parent()
        shutil.rmtree(self.root, ignore_errors=True)

    def _remove_cgroup_parent(self) -> None:
        for ctrl in self._cgroup_controllers():
            try:
                (ctrl / self.cgroup_parent).rmdir()
            except OSError:
                pass

    # private helpers
    def _cid(self, iid: str) -> str:
        return f"cl-{iid}"

    def _known_to_runc(self, iid: str) -> bool:
        """runc keeps a state directory per container; without one, asking runc is a wasted process start."""
        return (self.root / self._cid(iid)).exists()

    def _runc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["runc", "--root", str(self.root), *args], capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise DriverError(f"runc {args[0]} failed: {proc.stderr.strip()}")
        return proc

    def _last_runc_error(self, d: Path) -> str:
        try:
            lines = (d / "runc.log").read_text().strip().splitlines()
            return str(json.loads(lines[-1]).get("msg", lines[-1]))
        except (OSError, ValueError, IndexError):
            return "see runc.log"

    def _prepare(self, spec: LaunchSpec) -> None:
        """Idempotent: per-instance files and config.json."""
        d = self.dir / spec.id
        (d / "etc").mkdir(parents=True, exist_ok=True)
        (d / "etc" / "hostname").write_text(spec.hostname + "\n")
        (d / "etc" / "hosts").write_text(spec.hosts)
        (d / "etc" / "resolv.conf").write_text(spec.resolv_conf)
        self._write_seed(d, spec)
        if spec.rootfs is None or not spec.rootfs.exists():
            raise DriverError(f"root disk {spec.rootfs} of instance {spec.id} is missing")
        for dst in (SEED_DIR, RUNNER_DIR) if spec.user_data is not None else (SEED_DIR,):
            _check_mount_path(spec.rootfs, dst)
        for src, dst in spec.mounts:
            _check_mount_path(spec.rootfs, dst)
            self._own(Path(src), spec.uid_base)
        tmp = d / "config.json.tmp"
        tmp.write_text(json.dumps(self._oci_config(spec, d), indent=1))
        os.replace(tmp, d / "config.json")

    @staticmethod
    def _write_seed(d: Path, spec: LaunchSpec) -> None:
        """The NoCloud seed in instances/<id>/seed, and the boot runner beside it when there is user-data to run."""
        seed = d / "seed"
        seed.mkdir(exist_ok=True)
        (seed / "meta-data").write_text(spec.meta_data)
        (seed / "network-config").write_text(NETWORK_CONFIG)
        (seed / "vendor-data").write_text(VENDOR_DATA)
        if spec.user_data is None:
            (seed / "user-data").unlink(missing_ok=True)
            return
        (seed / "user-data").write_text(spec.user_data)
        (d / "runner").mkdir(exist_ok=True)
        (d / "runner" / "boot").write_text(RUNNER)
        os.chmod(d / "runner" / "boot", 0o755)  # run by the instance's root, which is "other" to host files

    @staticmethod
    def _link_console(d: Path, target: Path | None) -> None:
        """console.log is a link to where the log is kept when that is elsewhere (the tenant's size-limited
        console volume), so a flood fills that, not the host's disk; None removes the kept log and the link."""
        link = d / "console.log"
        if link.is_symlink():
            if target is not None and Path(os.readlink(link)) == target:
                return
            Path(os.readlink(link)).unlink(missing_ok=True)
            link.unlink()
        if target is not None:
            link.unlink(missing_ok=True)
            link.symlink_to(target)

    def _uid_base(self, iid: str) -> int | None:
        try:
            config = json.loads((self.dir / iid / "config.json").read_text())
            return int(config["linux"]["uidMappings"][0]["hostID"])
        except (OSError, ValueError, KeyError, IndexError):
            return None

    @staticmethod
    def _own(volume: Path, base: int | None) -> None:
        """A fresh volume's root belongs to host root, which is nobody inside a user namespace: hand it to the
        instance's root. Only the root directory: files in it were written by the same tenant's range."""
        if base is None:
            return
        st = os.lstat(volume)
        if not base <= st.st_uid < base + USERNS_IDS:
            os.lchown(volume, base, base)

    def _oci_config(self, spec: LaunchSpec, d: Path) -> dict[str, Any]:
        userns = spec.uid_base is not None
        caps = [*CAPS, "CAP_NET_RAW"] if spec.net_raw else CAPS

        def bind(src: str | Path, dst: str, ro: bool = True) -> dict[str, Any]:
            return {
                "destination": dst,
                "type": "bind",
                "source": str(src),
                "options": ["rbind", "ro" if ro else "rw", "nosuid", "nodev"],
            }

        return {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": 0, "gid": 0},
                "args": [INIT, "--", *([RUNNER_PATH] if spec.user_data is not None else []), *spec.command],
                "env": [
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    f"HOSTNAME={spec.hostname}",
                    "HOME=/root",
                    "TERM=xterm",
                ],
                "cwd": "/",
                "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024}],
                "noNewPrivileges": True,
            },
            "root": {"path": str(spec.rootfs), "readonly": False},
            "hostname": spec.hostname,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {
                    "destination": "/dev",
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
                },
                {
                    "destination": "/dev/pts",
                    "type": "devpts",
                    "source": "devpts",
                    "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
                },
                {
                    "destination": "/dev/shm",
                    "type": "tmpfs",
                    "source": "shm",
                    "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
                },
                {
                    "destination": "/dev/mqueue",
                    "type": "mqueue",
                    "source": "mqueue",
                    "options": ["nosuid", "noexec", "nodev"],
                },
                {
                    "destination": "/sys",
                    "type": "sysfs",
                    "source": "sysfs",
                    "options": ["nosuid", "noexec", "nodev", "ro"],
                },
                {
                    "destination": "/tmp",
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "nodev", "mode=1777", "size=65536k"],
                },
                bind(TINI, INIT),
                bind(d / "etc" / "hostname", "/etc/hostname"),
                bind(d / "etc" / "hosts", "/etc/hosts"),
                bind(d / "etc" / "resolv.conf", "/etc/resolv.conf"),
                bind(d / "seed", SEED_DIR),
                *([bind(d / "runner", RUNNER_DIR)] if spec.user_data is not None else []),
                *[bind(src, dst, ro=False) for src, dst in spec.mounts],
            ],
            "linux": {
                "namespaces": [
                    {"type": "pid"},
                    {"type": "ipc"},
                    {"type": "uts"},
                    {"type": "mount"},
                    {"type": "cgroup"},
                    {"type": "network", **({"path": spec.netns} if spec.netns else {})},
                    *([{"type": "user"}] if userns else []),
                ],
                **(
                    {
                        "uidMappings": [{"containerID": 0, "hostID": spec.uid_base, "size": USERNS_IDS}],
                        "gidMappings": [{"containerID": 0, "hostID": spec.uid_base, "size": USERNS_IDS}],
                    }
                    if userns
                    else {}
                ),
                "cgroupsPath": f"/{self.cgroup_parent}/{spec.id}",
                "resources": {
                    "devices": [{"allow": False, "access": "rwm"}],
                    "memory": {"limit": spec.memory_mib * 1024 * 1024},
                    "cpu": {"quota": int(spec.cpus * 100000), "period": 100000},
                    "pids": {"limit": 1024},
                },
                "seccomp": oci_profile(frozenset(caps)),
                "maskedPaths": MASKED,
                "readonlyPaths": READONLY,
            },
        }

    def _cgroup_controllers(self) -> list[Path]:
        if not CGROUP_ROOT.exists():
            return []
        return [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()]

    def _remove_cgroups(self, iid: str) -> None:
        for ctrl in self._cgroup_controllers():
            try:
                (ctrl / self.cgroup_parent / iid).rmdir()
            except OSError:
                pass

    def _track(self, iid: str, pid: int) -> None:
        if self._sel is None:
            return
        with self._lock:
            if self._watched.get(iid) == pid:
                return
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                return
            self._watch[fd] = iid
            self._watched[iid] = pid
            self._sel.register(fd, selectors.EVENT_READ)

    def _watch_loop(self) -> None:
        assert self._sel is not None
        rotated = time.monotonic()
        while True:
            if time.monotonic() - rotated > ROTATE_EVERY:
                rotated = time.monotonic()
                self._rotate_consoles()
            if not self._watch:
                time.sleep(0.05)
                continue
            for key, _ in self._sel.select(timeout=0.2):
                with self._lock:
                    fd = int(key.fd)
                    iid = self._watch.pop(fd, "")
                    self._watched.pop(iid, None)
                    self._sel.unregister(fd)
                    os.close(fd)
                log.info("init of instance %s exited", iid)
                if self._on_exit and iid:
                    self._on_exit(iid)

    def _rotate_consoles(self) -> None:
        """copytruncate: the instance writes console.log through an O_APPEND fd we cannot swap, so a log past
        CONSOLE_MAX is copied to console.log.1 and cut to zero (what it prints during the copy is lost)."""
        for d in self.dir.iterdir() if self.dir.is_dir() else ():
            log_path = d / "console.log"
            try:
                if log_path.stat().st_size <= CONSOLE_MAX:
                    continue
                with open(log_path, "rb") as src, open(d / "console.log.1.tmp", "wb") as dst:
                    src.seek(-CONSOLE_MAX, os.SEEK_END)
                    shutil.copyfileobj(src, dst)
                os.replace(d / "console.log.1.tmp", d / "console.log.1")
                os.truncate(log_path, 0)
            except OSError:
                continue  # the instance went away under us
