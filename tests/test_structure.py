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
