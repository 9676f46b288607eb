#!/usr/bin/env bash
# The main job: the shop stack (examples/shop.yaml) behind an HAProxy load balancer holding an elastic IP, with a
# Debian web tier over PostgreSQL; then the data plane serving on with the control plane killed.
set -euo pipefail
cd "$(dirname "$0")/.."
C=".venv/bin/cloudlet"
PY=".venv/bin/python"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
field() { $PY -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }

step "cloudlet up"
$C up

recipes_cached=yes
for packages in postgresql python3,python3-psycopg2; do
  # a layer's image recipe is built once (debootstrap) and cached by content; say so before timing the apply
  $C image list -o json | $PY -c '
import json, sys
want = sorted(sys.argv[1].split(","))
sys.exit(0 if any(sorted(i.get("packages") or []) == want and i.get("state") == "ready" for i in json.load(sys.stdin)) else 1)
' "$packages" || recipes_cached=no
done
if $C stack show shop >/dev/null 2>&1; then
  step "cloudlet stack delete shop --wait   (a re-run starts from nothing but cached images)"
  $C stack delete shop --wait
fi

step "cloudlet stack plan examples/shop.yaml"
$C stack plan examples/shop.yaml
if [ "$recipes_cached" = no ]; then
  echo "(first run: the two Debian images are built by debootstrap now, a few minutes; later runs reuse them)"
fi
step "cloudlet stack apply examples/shop.yaml --wait"
t0=$(now)
$C stack apply examples/shop.yaml --wait
eip=$($C eip show shop-public -o json | field 'd["address"]')
url="http://$eip/"
# the host reaches the cloud's public slice through the outside namespace only; check before sending anything
ip route get "$eip" | grep -q "cl$(cat "$($C info -o json | field 'd["home"]')/cloud.id")out" || {
  echo "no route to $eip through this cloud's outside namespace; not sending" >&2
  exit 1
}
get() { curl -s --noproxy '*' -m 3 "$@"; }
until get -f "$url" >/dev/null 2>&1; do
  if awk -v a="$t0" -v b="$(now)" 'BEGIN { exit !(b - a > 600) }'; then
    echo "no answer from $url after 600 s" >&2
    $C lb show shop-front >&2 || true
    exit 1
  fi
  sleep 0.2
done
first=$(since "$t0")
echo "first answer from $url $first s after stack apply (images cached before: $recipes_cached)"

step "the URL, from the host: $url"
echo "\$ curl $url   (10 times: answered by both web instances through the load balancer)"
for _ in $(seq 10); do get "$url"; echo; done | tee /tmp/cloudlet-demo-answers.$$ | sort | uniq -c
hosts=$(grep -o '"host": "[^"]*"' /tmp/cloudlet-demo-answers.$$ | sort -u | wc -l)
rm -f /tmp/cloudlet-demo-answers.$$
echo "distinct web instances answering: $hosts"

step "a write, then a restart of the database: the write persists (PostgreSQL's data is on a volume)"
echo "\$ curl -X POST ${url}orders"
order=$(get -X POST "${url}orders")
echo "$order"
count=$(printf '%s' "$order" | field 'd["orders"]')
$C restart db-1 --wait
until get -f "${url}health" >/dev/null 2>&1; do sleep 0.2; done
after=$(get "$url")
echo "after the restart: $after"
[ "$(printf '%s' "$after" | field 'd["orders"]')" = "$count" ] && echo "the write persisted ($count orders)"

step "cloudlet lb show shop-front   (state, weight, EWMA latency and error rate per member)"
$C lb show shop-front
step "cloudlet stack show shop"
$C stack show shop

step "browsing-only mode: cloudlet stack readonly shop on"
$C stack readonly shop on
t=$(now)  # the agent reloads the LB's HAProxy: a moment after the command returns
until [ "$(get -o /dev/null -w '%{http_code}' -X POST "${url}orders")" = 503 ] || awk -v a="$t" -v b="$(now)" 'BEGIN { exit !(b - a > 10) }'; do
  sleep 0.05
done
echo "(in effect $(since "$t") s later)"
echo "\$ curl $url              -> $(get -o /dev/null -w '%{http_code}' "$url")"
echo "\$ curl -X POST ${url}orders -> $(get -o /dev/null -w '%{http_code}' -X POST "${url}orders")"
get -X POST "${url}orders" | sed -e 's/<[^>]*>//g' | grep -v '^\s*$' | head -3
$C stack readonly shop off

step "kill -9 the control plane: the data plane keeps serving (LB, EIP, DNS, metadata live in the agent)"
home=$($C info -o json | field 'd["home"]')
kill -9 "$(cat "$home/cloudletd.pid")"
echo '$ cloudlet list'
$C list 2>&1 || true
echo "\$ curl $url"
get "$url"
echo
step "cloudlet up: the control plane comes back, the agent resyncs"
$C up
$C list
step "chaos: kill a web instance under load (examples/chaos/shop-kill-web.json, the Chaos Toolkit format)"
# the steady state (the LB answers 200, both web instances run) is checked before and after; a safeguard probes
# the LB every second during the kill; exit 1 (the demo stops) if the shop did not hold
$C chaos run examples/chaos/shop-kill-web.json --var eip="$eip" --journal "$home/chaos-journal.json"
$PY - "$home/chaos-journal.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
load = next((r["output"] for r in j["run"] if r["activity"]["name"] == "load"), None) or {}
print(f"journal ({sys.argv[1]}, Chaos Toolkit format): status {j['status']}, deviated {j['deviated']}; under load "
      f"{load.get('requests')} requests, {load.get('errors')} failed, p50 {load.get('p50_ms')} ms, max {load.get('max_ms')} ms")
PY
step "recent events"
$C events --limit 6
cat <<TXT

The shop answers at $url (first answer $first s after stack apply). Things to try (CLI: $C):
  curl $url ; curl -X POST ${url}orders
  $C stack plan examples/shop.yaml           # nothing to change; edit count: 3 under web and plan again
  $C exec -l cloudlet.io/layer=web -- hostname   # a command on every web instance, in parallel
  $C metadata web-1 meta-data/              # what web-1 sees at http://169.254.169.254/latest/
  $C secgroup list ; $C eip list ; $C lb list
  $C stack deploy shop --layer web --batch 1 # rolling deploy: out of the LB, deploy hook, back in
  $C stack flag shop beta=on                 # /latest/meta-data/flags/beta in every instance at once
  $C stack delete shop --wait                # removes every resource the stack made
  $C down                                    # stop everything, keep state;  $C down --purge  removes it all
TXT
