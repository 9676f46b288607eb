"""The example stack files parse, and examples/shop.yaml is what render_stack.py makes from the scripts beside it
(the demo deploys the file; the scripts are what was tested by hand)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cloudlet.stacks.spec import parse_stack

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_stacks_parse(path: Path) -> None:
    assert parse_stack(path.read_text()).layers


def test_shop_yaml_is_rendered_from_its_scripts() -> None:
    spec = importlib.util.spec_from_file_location("render_stack", EXAMPLES / "shop" / "render_stack.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = module.render(module.DEMO_PASSWORD)
    assert (EXAMPLES / "shop.yaml").read_text() == rendered, (
        "run: python3 examples/shop/render_stack.py --password shop-demo-pw > examples/shop.yaml"
    )
