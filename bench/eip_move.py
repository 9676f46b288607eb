"""Elastic IP move gap: a request loop in the outside namespace (a new TCP connection every ~10 ms, 200 ms timeout)
while the EIP moves back and forth between two busybox instances through the API. Per move: the gap between the
last answer of the old holder and the first of the new one (what a client sees), and the time from the API's
answer to the first answer of the new holder. Prints p50 and max over --moves moves (default 20). Goal: 1 s."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import percentile, real_cloud_env

sys.path.insert(0, str(Path(__file__).parents[1]))
from tests.helpers import REQUEST_LOOP

SERVE = "mkdir -p /w && echo hello from $(hostname) > /w/index.html && exec httpd -f -p 80 -h /w"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, default=20, help="number of moves (default 20)")
    args = ap.parse_args()
    with real_cloud_env() as (api, env):
        home = Path(env["CLOUDLET_HOME"])
        api.post("/v1/secgroups", json={"name": "web"}).raise_for_status()
        api.post("/v1/secgroups/web/rules", json={"protocol": "tcp", "ports": "80", "cidr": "0.0.0.0/0"})
        names = ("a", "b")
        for name in names:
            body = {
                "name": name,
                "image": "busybox",
                "memory_mib": 32,
                "secgroups": ["web"],
                "command": ["sh", "-c", SERVE],
            }
            api.post("/v1/instances", json=body).raise_for_status()
        deadline = time.monotonic() + 120
        while sum(i["state"] == "running" for i in api.get("/v1/instances").json()["items"]) < 2:
            assert time.monotonic() < deadline, "instances did not start"
            time.sleep(0.2)
        address = api.post("/v1/eips", json={"name": "bench"}).json()["address"]
        api.post("/v1/eips/bench/association", json={"target": "a"}).raise_for_status()
        outside = f"cl-{(home / 'cloud.id').read_text().strip()}-out"
        moves: list[tuple[str, float, float]] = []  # (new holder, before the request, after its answer)
        with tempfile.TemporaryFile("w+") as log:  # not a pipe: a full one would stall the loop
            argv = ["ip", "netns", "exec", outside, sys.executable, "-c", REQUEST_LOOP, address]
            loop = subprocess.Popen(argv, stdout=log)
            try:
                time.sleep(1.0)
                for i in range(args.moves):
                    to, sent = names[(i + 1) % 2], time.time()
                    api.post("/v1/eips/bench/association", json={"target": to}).raise_for_status()
                    moves.append((to, sent, time.time()))
                    time.sleep(1.0)
            finally:
                loop.kill()
                loop.wait()
            log.seek(0)
            samples = [json.loads(line) for line in log if line.startswith("[")]
        gaps, follows, missed = [], [], 0
        for i, (to, sent, done) in enumerate(moves):
            end = moves[i + 1][1] if i + 1 < len(moves) else float("inf")
            new = f"hello from {to}"
            answers = [t for t, body in samples if sent <= t < end and body == new]
            if not answers:
                missed += 1  # the new holder never answered before the next move
                continue
            last_old = max((t for t, body in samples if t < answers[0] and body not in (new, None)), default=sent)
            gaps.append(answers[0] - last_old)
            follows.append(answers[0] - done)
        if missed:
            print(f"{missed} of {args.moves} moves were not followed before the next one (1 s later)")
        print(f"| EIP move, {len(gaps)} moves between two busybox instances | p50 | max |")
        print("|---|---|---|")
        print(
            f"| gap between answers seen from the outside namespace | {percentile(gaps, 50) * 1000:.0f} ms | "
            f"{max(gaps) * 1000:.0f} ms |"
        )
        print(
            f"| API answered -> new holder answers | {percentile(follows, 50) * 1000:.0f} ms | "
            f"{max(follows) * 1000:.0f} ms |"
        )


if __name__ == "__main__":
    main()
