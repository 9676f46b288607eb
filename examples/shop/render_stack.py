"""Prints the shop's stack document, with app.py (as the web layer's user-data) and db-init.sh (as the db
layer's command) inlined from this directory, so the stack file never drifts from the scripts tested by hand.

    python3 examples/shop/render_stack.py [--password PW] > shop.yaml && cloudlet stack apply shop.yaml --wait

The database password is random unless given; render once and keep the file (applying it again changes nothing).
"""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_PASSWORD = "shop-demo-pw"  # examples/shop.yaml's (tests/unit/test_examples.py keeps the file rendered)


def block(text: str, indent: int) -> str:
    """A YAML literal block scalar (|) holding text exactly, each line indented."""
    pad = " " * indent
    return "|\n" + "".join(pad + line if line.strip() else "\n" for line in text.splitlines(keepends=True))


def render(password: str) -> str:
    user_data = (
        "#!/bin/sh\nmkdir -p /srv/shop\ncat >/srv/shop/app.py <<'APP'\n" + (HERE / "app.py").read_text() + "APP\n"
    )
    web_command = f"export SHOP_DB_HOST=db-1.shop.cloudlet SHOP_DB_PASSWORD={password}\nexec python3 /srv/shop/app.py\n"
    db_command = f"export SHOP_DB_PASSWORD={password}\n" + (HERE / "db-init.sh").read_text()
    return f"""\
# The shop: an HAProxy LB holding an EIP, two Debian web instances (app.py over psycopg2) and PostgreSQL on a
# volume. Rendered by examples/shop/render_stack.py from app.py and db-init.sh: edit those, then render again.
# The committed examples/shop.yaml (make demo) has the password {DEMO_PASSWORD!r}, which PostgreSQL accepts only from
# the shop's own subnet; render your own (a random one by default) for anything that matters.
# The database's root disk and volume are replicated to a host in another zone (none yet: they wait for one), so
# `cloudlet dr drill shop --to-zone zone-b` can rebuild the shop there.
name: shop
networks:
  net: {{}}
layers:
  db:
    image: {{packages: [postgresql]}}
    memory: 512
    replicas: 1
    volumes: [{{name: data, size_gib: 1, path: /var/lib/postgresql/data}}]
    command: {block(db_command, 6)}
  web:
    image: {{packages: [python3, python3-psycopg2]}}
    count: 2
    memory: 256
    user_data: {block(user_data, 6)}
    command: {block(web_command, 6)}
load_balancers:
  front: {{layer: web, port: 80, health_check: "http:/health"}}
eips:
  public: {{load_balancer: front}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--password", default=secrets.token_hex(12), help="the database role's password")
    print(render(parser.parse_args().password), end="")


if __name__ == "__main__":
    main()
