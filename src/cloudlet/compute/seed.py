"""Boot-time configuration inside an instance: the NoCloud seed and the boot runner that runs its user-data.

The agent writes the seed (`meta-data`, `network-config`, `vendor-data`, and `user-data` when the instance has one)
into a host-owned directory, bound read-only at `SEED_DIR` in the instance, where cloud-init's NoCloud datasource
reads it. An instance with user-data also gets `RUNNER` bound read-only at `RUNNER_PATH` (in `RUNNER_DIR`), which
init starts before the instance's command (one sh): an image with cloud-init hands the seed to cloud-init's own
stages (which keep their per-instance state); any other runs a user-data starting with `#!` once per instance-id,
leaving a marker in the instance's own disk so a restart does not run it again. Its output goes to the console.
"""

from __future__ import annotations

__all__ = [
    "SEED_DIR",
    "RUNNER_DIR",
    "RUNNER_PATH",
    "RUNNER",
    "USER_DATA_MAX",
    "NETWORK_CONFIG",
    "VENDOR_DATA",
    "meta_data",
]

SEED_DIR = "/var/lib/cloud/seed/nocloud"
RUNNER_DIR = "/.cloudlet"  # bound as a directory: a file's mount point would be a file in the tenant's disk
RUNNER_PATH = f"{RUNNER_DIR}/boot"
USER_DATA_MAX = 16 << 10  # bytes, as EC2's limit
# the host plumbs the network and binds /etc/hostname read-only: cloud-init must leave both alone
NETWORK_CONFIG = "config: disabled\n"
VENDOR_DATA = "#cloud-config\npreserve_hostname: true\n"

RUNNER = f"""#!/bin/sh
# cloudlet boot runner: the instance's user-data, then its command (see cloudlet/compute/seed.py)
seed={SEED_DIR}
if [ -x /usr/bin/cloud-init ]; then
    # each stage whatever the last one's status: one failed module (of many) must not skip the user's scripts
    /usr/bin/cloud-init init --local
    /usr/bin/cloud-init init
    /usr/bin/cloud-init modules --mode=config
    /usr/bin/cloud-init modules --mode=final
else
    id=
    while IFS=': ' read -r key value; do
        [ "$key" = instance-id ] && id=$value
    done < "$seed/meta-data"
    read -r first < "$seed/user-data"
    case "$first" in
    '#!'*)
        if [ -n "$id" ] && [ ! -e "/var/lib/cloudlet-boot/$id.done" ]; then
            mkdir -p /var/lib/cloudlet-boot
            cp "$seed/user-data" "/var/lib/cloudlet-boot/$id.user-data"
            chmod 700 "/var/lib/cloudlet-boot/$id.user-data"
            echo "cloudlet-boot: running user-data of $id"
            "/var/lib/cloudlet-boot/$id.user-data"
            echo "cloudlet-boot: user-data exited $?"
            : > "/var/lib/cloudlet-boot/$id.done"
        fi
        ;;
    *) echo "cloudlet-boot: the user-data is no script (#!...) and this image has no cloud-init: not run" ;;
    esac
fi
exec "$@"
"""


def meta_data(instance_id: str, hostname: str) -> str:
    """NoCloud's meta-data (YAML): what cloud-init needs to tell one instance from the next."""
    return f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n"
