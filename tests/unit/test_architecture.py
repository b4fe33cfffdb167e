"""The layout ARCHITECTURE.md describes, checked on the code's imports: adapters only through the container, doors
that never import each other, and the ask pipeline's stages below their doors."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
# The HTTP doors: each maps the pipeline's events (or a feature's results) itself.
DOORS = {
    "service.ask.routes", "service.ask.openai", "service.search.routes", "service.documents.routes",
    "service.routes.health", "service.routes.keys", "service.routes.session", "service.feedback.routes",
    "service.slack.routes",
}  # fmt: skip


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def sources(*packages: str) -> list[Path]:
    return [p for package in packages for p in sorted((ROOT / package).rglob("*.py"))]


def test_only_the_container_builds_adapters() -> None:
    offenders = {
        module_name(path): sorted(m for m in imports(path) if m.startswith("kb.adapters"))
        for path in sources("service", "ingest", "evaluation", "kb")
        if not module_name(path).startswith("kb.adapters") and module_name(path) != "kb.container"
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_no_door_imports_another_door() -> None:
    offenders = {
        module_name(path): sorted(imports(path) & (DOORS - {module_name(path)}))
        for path in sources("service")
        if module_name(path) in DOORS
    }
    assert {name: found for name, found in offenders.items() if found} == {}
    assert all((ROOT / (door.replace(".", "/") + ".py")).exists() for door in DOORS)


def test_the_pipeline_and_its_stages_know_no_http() -> None:
    """The stages serve every door (HTTP, CLI, the Slack bot): no web framework, no door, below them."""
    http = DOORS | {"service.ask.access", "service.ask.schemas"}  # the doors' own modules
    stages = [p for p in sources("service/ask") if module_name(p) not in http]
    assert len(stages) >= 10
    offenders = {
        module_name(path): sorted(m for m in imports(path) if m.startswith(("litestar", "service.routes", "service.app"))
                                  or m in DOORS or m.startswith("service.ask.access"))
        for path in stages
    }  # fmt: skip
    assert {name: found for name, found in offenders.items() if found} == {}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("kb", ("service", "ingest", "evaluation")), ("ingest", ("service", "evaluation")), ("evaluation", ("service",))],
)
def test_dependencies_point_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    """service -> evaluation -> ingest -> kb (and service -> ingest, service -> kb)."""
    offenders = {
        module_name(path): sorted(m for m in imports(path) if m.split(".")[0] in forbidden)
        for path in sources(package)
    }
    assert {name: found for name, found in offenders.items() if found} == {}
