"""The code's shape, checked: small modules, each saying what it owns."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
LIMIT = 400


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_is_small_and_says_what_it_owns(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= LIMIT, f"{path.name} has {text.count(chr(10))} lines (at most {LIMIT})"
    assert ast.get_docstring(ast.parse(text)), f"{path.name} has no docstring"


def test_the_readme_code_map_names_every_module() -> None:
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Code map", 1)[1].split("\n## ", 1)[0]
    for path in MODULES:
        if path.name == "__init__.py":
            continue
        name = str(path.relative_to(PACKAGE.parent))
        assert f"`{name}`" in section, f"{name} is missing from the README's code map"


def test_a_missing_data_folder_is_a_clear_error() -> None:
    from gateway.resources import MissingFiles, data_dir

    assert (data_dir("sql") / "0001_init.sql").is_file()
    with pytest.raises(MissingFiles, match="the gateway's nope/ folder is missing"):
        data_dir("nope")


def test_no_module_imports_itself_round_a_circle() -> None:
    """Typing imports included: a circle that hides behind TYPE_CHECKING is one waiting to
    happen (grimp is import-linter's own graph)."""
    import grimp

    graph = grimp.build_graph("gateway", exclude_type_checking_imports=False)
    circles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                circles.append(" -> ".join((importer, *back)))
    assert circles == []


@pytest.mark.parametrize(
    "module", sorted(m for m in __import__("grimp").build_graph("gateway").modules if m != "gateway.__main__")
)
def test_every_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    """As aiohttp's tests/test_circular_imports.py: an import order that only works after some
    other module was imported first is a bug a reader cannot see."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
