#!/bin/sh
# The shop's database instance: its command (image built with --packages postgresql). PostgreSQL 15 runs as user
# postgres with its data on the volume attached at $PGDATA: initdb, role, database and the orders table on the first
# boot; on every boot pg_hba admits the role `shop` by password from the instance's own subnet only.
# Environment: SHOP_DB_PASSWORD (default "shop"), SHOP_DB_SUBNET (default: the eth0 subnet), PGDATA.
set -eu
PGDATA=${PGDATA:-/var/lib/postgresql/data}
BIN=/usr/lib/postgresql/15/bin
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

# Today's CLI attaches a volume after launch: wait for it, or initdb would write to the root disk, under the mount.
tries=0
until mountpoint -q "$PGDATA"; do
    tries=$((tries + 1))
    if [ "$tries" -gt 300 ]; then
        echo "db-init: no volume at $PGDATA after 60 s: cloudlet volume attach VOLUME $(hostname) --path $PGDATA" >&2
        exit 1
    fi
    sleep 0.2
done
# a fresh volume's root is the instance's root (cloudlet hands it over); initdb wants it postgres's and 0700
chown postgres:postgres "$PGDATA"
chmod 700 "$PGDATA"

# /proc/net/route holds eth0's on-link route as little-endian hex (0001F00A 00FFFFFF = 10.240.1.0/24): no iproute2 here
subnet=${SHOP_DB_SUBNET:-$(awk '
    function byte(h, i) { return index("0123456789ABCDEF", substr(h, i, 1)) * 16 + index("0123456789ABCDEF", substr(h, i + 1, 1)) - 17 }
    function bits(b, n) { n = 0; while (b > 0) { n += b % 2; b = int(b / 2) }; return n }
    $1 == "eth0" && $3 == "00000000" {
        print byte($2, 7) "." byte($2, 5) "." byte($2, 3) "." byte($2, 1) "/" \
            bits(byte($8, 1)) + bits(byte($8, 3)) + bits(byte($8, 5)) + bits(byte($8, 7)); exit
    }' /proc/net/route)}
address=$(hostname -i)
if [ -z "$subnet" ] || [ -z "$address" ]; then
    echo "db-init: no address or subnet on eth0 (subnet '$subnet', address '$address')" >&2
    exit 1
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # --no-sync and one syncfs at the end: 0.5 s instead of 1.4 (initdb fsyncs each of its ~1,000 files)
    as_pg "$BIN/initdb" --no-sync -D "$PGDATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    as_pg "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    as_pg psql -X -q -v ON_ERROR_STOP=1 -v pw="${SHOP_DB_PASSWORD:-shop}" <<'SQL'
CREATE ROLE shop LOGIN PASSWORD :'pw';
CREATE DATABASE shop OWNER shop;
\c shop
CREATE TABLE orders (id bigserial PRIMARY KEY, host text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
ALTER TABLE orders OWNER TO shop;
SQL
    as_pg "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
    sync -f "$PGDATA"
    echo "db-init: initialised $PGDATA" >&2
fi
cat >"$PGDATA/pg_hba.conf" <<EOF
local all postgres peer
host shop shop $subnet scram-sha-256
EOF
chown postgres:postgres "$PGDATA/pg_hba.conf"

echo "db-init: PostgreSQL on $address:5432, clients from $subnet" >&2
# not through as_pg: a function in the background is a subshell, which would be $! and ignores SIGINT
setpriv --reuid=postgres --regid=postgres --init-groups "$BIN/postgres" -D "$PGDATA" -c listen_addresses="$address" &
pg=$!
# a stop is SIGTERM, which PostgreSQL takes as "wait for every client to leave" (the web tier never does):
# turn it into SIGINT, the fast shutdown, so it is done well inside the runtime's 5 s before SIGKILL
trap 'kill -INT $pg' TERM INT
set +e
wait $pg
status=$?
while kill -0 $pg 2>/dev/null; do # the first wait ended for the trap: wait for PostgreSQL itself
    wait $pg
    status=$?
done
exit $status
