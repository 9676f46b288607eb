#!/usr/bin/env bash
# The main job: the shop stack (examples/shop.yaml) behind an HAProxy load balancer holding an elastic IP, with a
# Debian web tier over PostgreSQL; the data plane serving on with the control plane killed; a chaos experiment;
# a DR drill that rebuilds the shop on a second host in zone-b from its replicas and fails back.
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
if ! $C host show h2 >/dev/null 2>&1; then
  step "cloudlet host add h2 --zone zone-b   (a second host in its own namespace, in a second zone, for the DR drill)"
  $C host add h2 --zone zone-b
fi
# the shop starts in zone-a (host local); meanwhile h2 builds its own copies of the images
$C host cordon h2

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
step "DR drill: the shop rebuilt in zone-b from its replicas, then back to zone-a"
$C host uncordon h2
echo "(the database's root disk and volume ship to h2 every 5 s; h2 needs the Debian images: the first time, it"
echo " builds them with debootstrap, a few minutes)"
$PY - "$C" <<'PY'
import json, subprocess, sys, time
def get(*args):
    return json.loads(subprocess.run([sys.argv[1], *args, "-o", "json"], capture_output=True, text=True, check=True).stdout)
def lacking():
    images = [i["name"] for i in get("image", "list") if "h2" not in (i.get("hosts") or [])]
    volumes = [get("volume", "show", v["name"]) for v in get("volume", "list") if v.get("attached_to") == "db-1"]
    disks = [d for d in [get("show", "db-1"), *volumes] if (d.get("replica") or {}).get("host") != "h2"]
    return images, [d["name"] for d in disks]
t0, said = time.time(), None
while any(lacking()):
    images, copies = lacking()
    line = f"waiting for h2: images {', '.join(images) or 'all there'}; replicas of {', '.join(copies) or 'all there'}"
    if line != said:
        print(f"  {time.time() - t0:6.1f} s  {line}", flush=True)
        said = line
    if time.time() - t0 > 1200:
        sys.exit("h2 did not get the images and replicas in 20 minutes: cloudlet image list; cloudlet show db-1")
    time.sleep(2)
print(f"  h2 holds the images and the database's replicas ({time.time() - t0:.1f} s)")
PY
# a GET every 0.1 s through the EIP during the drill: what a user of the shop saw
log="$home/drill-gets.log"
: >"$log"
( while :; do printf '%s %s\n' "$(now)" "$(get -o /dev/null -w '%{http_code}' "$url")" >>"$log"; sleep 0.1; done ) &
probe=$!
echo "\$ cloudlet dr drill shop --to-zone zone-b --failback --report $home/drill.json"
drilled=0
$C dr drill shop --to-zone zone-b --failback --report "$home/drill.json" || drilled=$?
kill "$probe" 2>/dev/null || true
wait "$probe" 2>/dev/null || true
$PY - "$home/drill.json" "$log" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
samples = [(float(t), code) for t, code in (line.split() for line in open(sys.argv[2]) if len(line.split()) == 2)]
ok = sum(code.startswith("2") for _, code in samples)
worst, down = 0.0, None
for t, code in samples:
    if not code.startswith("2"):
        down = t if down is None else down
    elif down is not None:
        worst, down = max(worst, t - down), None
for leg in report["legs"]:
    print(f"{leg['leg']} to {leg['to_zone']}: RTO {leg['rto_s']} s, RPO {leg['rpo_s']} s")
print(f"GET / through the EIP every 0.1 s during the drill: {ok} of {len(samples)} answered, longest outage {worst:.1f} s")
print(f"verdict: {report['verdict']} (report: {sys.argv[1]} and .txt beside it)")
PY
[ "$drilled" = 0 ] || exit "$drilled"

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
  $C dr status                               # each stack's last drill, RTO and RPO
  $C stack flag shop beta=on                 # /latest/meta-data/flags/beta in every instance at once
  $C stack delete shop --wait                # removes every resource the stack made
  $C down                                    # stop everything, keep state;  $C down --purge  removes it all
TXT
