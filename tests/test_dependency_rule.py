"""The layers import one way (docs/architecture.md): core imports nothing else of ours, the SDK neither the job
layer nor the backends, the service none of the SDK or the CLI, and the backends never the job layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rsa_service"

# layer -> packages of ours it must not import
FORBIDDEN = {
    "core": ("api", "backends", "batch", "cli", "client", "jobs", "settings", "wire", "metrics", "retry"),
    "client": ("api", "backends", "batch", "cli", "jobs", "settings", "metrics"),
    "backends": ("api", "batch", "cli", "client", "jobs"),
    "jobs": ("api", "batch", "cli", "client"),
    "api": ("batch", "cli", "client"),
}


def _ours(path: Path) -> set[str]:
    """The second component of every `rsa_service.X` this module imports, lazily or not."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found |= {name.split(".")[1] for name in names if name.startswith("rsa_service.")}
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(layer: str) -> None:
    broken = {
        str(path.relative_to(PACKAGE)): sorted(_ours(path) & set(FORBIDDEN[layer]))
        for path in sorted((PACKAGE / layer).rglob("*.py"))
    }
    assert {module: names for module, names in broken.items() if names} == {}
