#!/usr/bin/env bash
# The shop by hand, with today's CLI: network `shop`, PostgreSQL on db-1 with volume db-data, web-1 and web-2
# running app.py, then checks from a client inside the network (busybox instance `shop-probe`): both web instances
# answer, a write survives a restart of db-1. Prints the time from the first launch to the first answer.
#
#   examples/shop/manual.sh        # up (builds the two images the first time) and check
#   examples/shop/manual.sh down   # delete what `up` made (the images stay cached)
#
# Uses the cloud `cloudlet` talks to (CLOUDLET_HOME, ...); CLOUDLET names the CLI (default: cloudlet on PATH).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
C=${CLOUDLET:-cloudlet}
PGDATA=/var/lib/postgresql/data

say() { printf '== %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# busybox 1.35 wget segfaults with -T (on the host too): the exec timeout bounds it instead
probe() { $C exec shop-probe --timeout 5 -- wget -q -O- "$@"; }

if [ "${1:-up}" = down ]; then
    $C delete web-1 web-2 db-1 shop-probe --wait || true
    $C volume delete db-data || true
    $C network delete shop || true
    exit 0
fi

# The password reaches both tiers through their commands: fixed for the cloud's life once chosen here.
password=${SHOP_DB_PASSWORD:-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')}

say "images (debootstrap the first time, cached by content after)"
t=$(now)
$C image build shop-web --packages python3,python3-psycopg2
$C image build shop-db --packages postgresql
say "images ready in $(since "$t") s"

$C network create shop
$C volume create db-data --size 1
$C launch busybox shop-probe --network shop --command "exec sleep infinity" --wait

say "launching db-1, web-1, web-2"
t0=$(now)
# db-1 waits in db-init.sh until the volume is attached (attach needs the instance to exist)
$C launch shop-db db-1 --network shop --memory 512 --command "export SHOP_DB_PASSWORD=$password
$(cat "$here/db-init.sh")"
$C volume attach db-data db-1 --path "$PGDATA"
# the app arrives as user-data (run once per instance, before the command); the command runs it at every boot
user_data=$(mktemp)
trap 'rm -f "$user_data"' EXIT
{
    printf '#!/bin/sh\nmkdir -p /srv/shop\ncat >/srv/shop/app.py <<'"'APP'"'\n'
    cat "$here/app.py"
    printf 'APP\n'
} >"$user_data"
web_command="export SHOP_DB_HOST=db-1.shop.zone-a.cloudlet SHOP_DB_PASSWORD=$password
exec python3 /srv/shop/app.py"
for web in web-1 web-2; do
    $C launch shop-web "$web" --network shop --user-data "$user_data" --command "$web_command"
done

for web in web-1 web-2; do
    until probe "http://$web/health" >/dev/null 2>&1; do
        if awk -v a="$t0" -v b="$(now)" 'BEGIN { exit !(b - a > 120) }'; then
            say "$web did not answer within 120 s"
            $C console "$web" | tail -5 >&2
            $C console db-1 | tail -5 >&2
            exit 1
        fi
        sleep 0.2
    done
    say "$web answers $(since "$t0") s after the first launch"
done

say "both web instances answer"
for web in web-1 web-2; do
    body=$(probe "http://$web/")
    echo "GET http://$web/ -> $body"
    case $body in *"\"host\": \"$web\""*) ;; *) say "unexpected answer from $web"; exit 1 ;; esac
done

say "a write persists across a restart of db-1"
order=$(probe --post-data "" "http://web-1/orders")
echo "POST http://web-1/orders -> $order"
count=$(printf '%s' "$order" | sed 's/.*"orders": \([0-9]*\).*/\1/')
t=$(now)
$C restart db-1 --wait
until probe "http://web-2/health" >/dev/null 2>&1; do sleep 0.2; done
say "db-1 restarted and answering again in $(since "$t") s"
after=$(probe "http://web-2/")
echo "GET http://web-2/ -> $after"
case $after in *"\"orders\": $count}"*) say "shop OK: $count orders kept" ;; *) say "lost writes: expected $count"; exit 1 ;; esac
