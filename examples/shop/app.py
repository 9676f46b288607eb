"""The shop's web tier: a small JSON app over PostgreSQL (standard library + psycopg2 from Debian).

GET /        {"host", "orders"}: this instance's hostname and the number of orders in the database
POST /orders inserts an order, answers 201 {"host", "order", "orders"}
GET /health  200 while the database answers, else 503 (what a load balancer's check asks)

Config from the environment: SHOP_DB_HOST (else the metadata service's tag `shop-db-host`, else
db-1.shop.cloudlet, the stack's name), SHOP_DB_NAME, SHOP_DB_USER, SHOP_DB_PASSWORD (all default `shop`),
SHOP_PORT (80). The schema belongs to the database instance (db-init.sh), so two web instances never race to make it.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg2

METADATA_TAG = "http://169.254.169.254/latest/meta-data/tags/instance/shop-db-host"
HOST = socket.gethostname()
_local = threading.local()


def db_host() -> str:
    if host := os.environ.get("SHOP_DB_HOST"):
        return host
    try:  # the stack may say where its database is; a cloud without a metadata service answers nothing quickly
        with urllib.request.urlopen(METADATA_TAG, timeout=0.5) as resp:
            return str(resp.read().decode().strip()) or "db-1.shop.cloudlet"
    except OSError:
        return "db-1.shop.cloudlet"


DSN = {
    "host": db_host(),
    "dbname": os.environ.get("SHOP_DB_NAME", "shop"),
    "user": os.environ.get("SHOP_DB_USER", "shop"),
    "password": os.environ.get("SHOP_DB_PASSWORD", "shop"),
    "connect_timeout": 2,
}


def query(sql: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    """One statement in its own transaction on this thread's connection; a connection the database dropped
    (it restarted) is replaced once, so a request after a database restart succeeds instead of failing."""
    for attempt in (1, 2):
        conn = getattr(_local, "conn", None)
        try:
            if conn is None or conn.closed:
                conn = _local.conn = psycopg2.connect(**DSN)
            with conn, conn.cursor() as cur:
                cur.execute(sql, args)
                row: tuple[Any, ...] = cur.fetchone()
                return row
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            if conn is not None:
                conn.close()
            _local.conn = None
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a load balancer reuses its connections

    def answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        try:
            if self.path == "/health":
                query("SELECT 1")
                self.answer(200, {"host": HOST, "db": "ok"})
            elif self.path == "/":
                self.answer(200, {"host": HOST, "orders": query("SELECT count(*) FROM orders")[0]})
            else:
                self.answer(404, {"error": f"no page {self.path}"})
        except psycopg2.Error as exc:
            self.answer(503, {"host": HOST, "error": f"database: {str(exc).strip()}"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))  # the body is not used: drain it
        if self.path not in ("/orders", "/hit"):
            self.answer(404, {"error": f"no page {self.path}"})
            return
        try:
            order, count = query(
                "WITH new AS (INSERT INTO orders (host) VALUES (%s) RETURNING id)"
                " SELECT (SELECT id FROM new), (SELECT count(*) FROM orders) + 1",
                (HOST,),
            )
            self.answer(201, {"host": HOST, "order": order, "orders": count})
        except psycopg2.Error as exc:
            self.answer(503, {"host": HOST, "error": f"database: {str(exc).strip()}"})

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would flood the console; errors answer with their message instead


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for the address's full name (socket.getfqdn): skip the round trip
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a check or client that hung up early: not news
            super().handle_error(request, client_address)


def main() -> None:
    port = int(os.environ.get("SHOP_PORT", "80"))
    server = Server(("0.0.0.0", port), Handler)
    print(f"shop app on {HOST}:{port}, database {DSN['host']}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
