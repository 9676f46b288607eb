#!/usr/bin/env bash
# The main job: a small cloud with three instances on a network, one reaching another by DNS name.
set -euo pipefail
cd "$(dirname "$0")/.."
C=".venv/bin/cloudlet"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "cloudlet up"
$C up
step "cloudlet network create shop"
$C network show shop >/dev/null 2>&1 || $C network create shop --subnet 10.240.10.0/24
for n in web-1 web-2 db-1; do
  if $C show "$n" >/dev/null 2>&1; then
    echo "instance $n already exists"
  else
    step "cloudlet launch busybox $n --network shop --wait"
    $C launch busybox "$n" --network shop --memory 64 --wait
  fi
done
step "cloudlet list"
$C list
step "db-1 fetches a page from web-1 by its DNS name"
echo '$ cloudlet exec db-1 -- wget -qO- http://web-1.shop.zone-a.cloudlet/'
$C exec db-1 -- wget -qO- http://web-1.shop.zone-a.cloudlet/
step "the host resolves the same name through cloudlet's DNS"
port=$($C info -o json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["ports"]["dns@local"])')
resolve() {
  .venv/bin/python - "$port" <<'PY'
import sys
from dnslib import DNSRecord
q = DNSRecord.question("web-2.shop.zone-a.cloudlet")
print("web-2.shop.zone-a.cloudlet ->", DNSRecord.parse(q.send("127.0.0.1", int(sys.argv[1]), timeout=2)).a.rdata)
PY
}
resolve
step "hosts: each runs its own agent (the data plane)"
$C host list
step "kill -9 the control plane: the data plane keeps serving"
home=$($C info -o json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["home"])')
kill -9 "$(cat "$home/cloudletd.pid")"
echo '$ cloudlet list'
$C list || true
echo "names still resolve (the agent answers from its cache):"
resolve
step "cloudlet up: the control plane comes back, the agent resyncs"
$C up
$C list
step "recent events"
$C events --limit 6
cat <<TXT

The cloud is still running. Things to try (CLI: $C):
  $C show web-1                    # address, pid, limits, placement, cgroup stats
  $C exec web-1 -- ps              # tini is PID 1 inside every instance
  kill -9 \$($C show web-2 -o json | .venv/bin/python -c 'import json,sys;print(json.load(sys.stdin)["pid"])')
  $C events web-2                  # Exited, then Restarted (restart policy always)
  $C launch busybox tmp --wait && $C delete tmp
  $C image build debian-12 --packages python3   # Debian via debootstrap (~1 min, cached)
  $C repair --check                # orphans and missing artefacts
  $C down                          # stop everything, keep state;  $C down --purge  removes it all
TXT
