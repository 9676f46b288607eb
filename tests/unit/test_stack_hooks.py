"""What a lifecycle hook finds in its environment."""

from __future__ import annotations

import json

from cloudlet.stacks.hooks import ENV_MAX, hook_env


def test_hooks_see_who_they_are_and_the_members_in_service() -> None:
    membership = {
        "web": [
            {"name": "web-1", "ip": "10.240.1.2", "dns": "web-1.shop.cloudlet", "state": "in-service"},
            {"name": "web-2", "ip": "10.240.1.3", "dns": "web-2.shop.cloudlet", "state": "setup"},
        ],
        "db-main": [{"name": "db-main-1", "ip": "10.240.1.4", "dns": "db-main-1.shop.cloudlet", "state": "in-service"}],
    }
    env = hook_env("shop", "web", "web-2", "setup", membership)
    assert env["CLOUDLET_STACK"] == "shop" and env["CLOUDLET_INSTANCE"] == "web-2" and env["CLOUDLET_EVENT"] == "setup"
    assert env["CLOUDLET_LAYER_WEB_IPS"] == "10.240.1.2"  # web-2 is not in service yet
    assert env["CLOUDLET_LAYER_DB_MAIN_IPS"] == "10.240.1.4"
    assert json.loads(env["CLOUDLET_MEMBERSHIP"]) == membership


def test_a_membership_too_large_for_one_argument_is_left_to_the_metadata() -> None:
    big = {
        "web": [{"name": f"web-{n}", "ip": f"10.240.{n // 250}.{n % 250}", "state": "in-service"} for n in range(2000)]
    }
    env = hook_env("big", "web", "web-1", "configure", big)
    assert env["CLOUDLET_MEMBERSHIP"] == "" and len(json.dumps(big)) > ENV_MAX
    assert len(env["CLOUDLET_LAYER_WEB_IPS"].split()) == 2000
