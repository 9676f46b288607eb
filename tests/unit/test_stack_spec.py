"""The stack document: errors name the line and the field; references are checked; the schema is JSON Schema."""

from __future__ import annotations

import pytest

from cloudlet.core.errors import BadRequest
from cloudlet.stacks.spec import parse_stack, stack_schema

GOOD = """\
name: shop
flags: {color: blue}
networks:
  net: {subnet: 10.240.77.0/24}
layers:
  web:
    count: 2
    memory: 64
    command: httpd -f -p 80
    hooks:
      setup: touch /tmp/setup
  db:
    image: {base: debian-12, packages: [postgresql]}
    volumes: [{name: data, size_gib: 1, path: /var/lib/postgresql}]
"""


def test_a_good_document_parses_with_defaults() -> None:
    doc = parse_stack(GOOD)
    assert doc.name == "shop" and doc.flags == {"color": "blue"}
    assert doc.layers["web"].count == 2 and doc.layers["web"].cpus == 1.0
    assert doc.layers["web"].hooks.setup == "touch /tmp/setup" and doc.layers["web"].hooks.deploy is None
    assert doc.layers["db"].volumes[0].path == "/var/lib/postgresql"


def _error(text: str) -> str:
    with pytest.raises(BadRequest) as err:
        parse_stack(text)
    return err.value.message


def test_an_unknown_field_is_named_with_its_line() -> None:
    assert _error(GOOD.replace("    count: 2", "    cuont: 2")) == "line 7: layers.web.cuont: unknown field"
    assert "line 11: layers.web.hooks.setpu: unknown field" in _error(GOOD.replace("setup:", "setpu:"))


def test_a_wrong_value_is_named_with_its_line() -> None:
    msg = _error(GOOD.replace("memory: 64", "memory: lots"))
    assert msg.startswith("line 8: layers.web.memory: "), msg
    msg = _error(GOOD.replace("size_gib: 1", "size_gib: 0"))
    assert msg.startswith("line 14: layers.db.volumes[0].size_gib: "), msg
    assert _error("layers: {}\n") == "line 1: name: required field missing"


def test_invalid_yaml_names_its_line() -> None:
    msg = _error("name: shop\nlayers:\n  web: [unclosed\n")
    assert msg == "line 4: invalid YAML: expected ',' or ']', but got '<stream end>'", msg
    assert _error("name: a\nname: b\n") == "line 2: name: duplicate key"
    assert _error("- a list\n").startswith("line 1: a stack is a YAML mapping")


def test_references_must_exist() -> None:
    assert "layers.web.network: 'nope'" in _error(GOOD.replace("    count: 2", "    network: nope"))
    lb = GOOD + "load_balancers:\n  front: {layer: api}\n"
    assert "load_balancers.front.layer: 'api' is not a key of layers" in _error(lb)
    eip = GOOD + "eips:\n  pub: {}\n"
    assert "eips.pub: give exactly one" in _error(eip)


def test_schema_is_json_schema_and_forbids_unknown_fields() -> None:
    schema = stack_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["additionalProperties"] is False
    layer = schema["$defs"]["Layer"]
    assert layer["additionalProperties"] is False and "hooks" in layer["properties"]


def test_hostile_documents_are_refused_not_crashed_on() -> None:
    assert _error("\x1f").startswith("line 1: invalid YAML")
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi")
    )
    assert "too large or too deeply nested" in _error(laughs)
    assert "invalid YAML" in _error("name: " + "[" * 5000 + "]" * 5000)
    assert "too large or too deeply nested" in _error("name: " + "[" * 40 + "]" * 40)
