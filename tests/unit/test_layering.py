"""The layers hold: core imports no domain; domains import no API or CLI code; the CLI reaches the cloud only over
HTTP; the API's routes do not import the app that includes them. Checked on the import statements that run when a
module loads (imports inside functions and under TYPE_CHECKING do not load anything then)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "cloudlet"
DOMAINS = ("compute", "network", "storage")


def _module(path: Path) -> str:
    return ".".join(("cloudlet", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")


def _load_time_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)

    visit(tree.body)
    return {name for name in found if name.startswith("cloudlet")}


MODULES = {_module(p): _load_time_imports(p) for p in SRC.rglob("*.py")}


def _violations(prefix: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    out = []
    for mod, imports in MODULES.items():
        if mod == prefix or mod.startswith(prefix + "."):
            out += [
                f"{mod} imports {imp}" for imp in imports if imp.startswith(forbidden) and not imp.startswith(allowed)
            ]
    return out


def test_core_imports_no_domain() -> None:
    others = tuple(f"cloudlet.{d}" for d in (*DOMAINS, "agent", "api", "cli", "daemon", "domains", "resilience"))
    assert _violations("cloudlet.core", others) == []


@pytest.mark.parametrize("domain", DOMAINS)
def test_domains_import_no_api_or_cli(domain: str) -> None:
    assert _violations(f"cloudlet.{domain}", ("cloudlet.api", "cloudlet.cli")) == []


# what `cloudlet up`, `down` and `host add|remove|partition` do to this machine itself (cli/daemons.py): the
# underlay between its hosts' namespaces, and the netns fence of a host removed by force
MACHINE = ("cloudlet.network.underlay", "cloudlet.resilience.fence")


def test_cli_talks_only_http() -> None:
    allowed = ("cloudlet.cli", "cloudlet.core.config", "cloudlet.core.errors")
    violations = _violations("cloudlet.cli", ("cloudlet.",), allowed)
    assert [v for v in violations if not (v.startswith("cloudlet.cli.daemons ") and v.endswith(MACHINE))] == []


def test_routes_do_not_import_the_app() -> None:
    assert _violations("cloudlet.api.routes", ("cloudlet.api.app",)) == []
