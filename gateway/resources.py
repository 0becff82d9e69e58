"""Where the gateway's own files are: `sql/`, `templates/` and `static/`.

A wheel carries them inside the package (`gateway/sql/` …, mapped by `package-dir` in
pyproject.toml); a checkout keeps them at the top of the repository, where the design puts them.
Both are looked up through `importlib.resources` first, so the installed copy always wins.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


class MissingFiles(RuntimeError):
    """An install without the gateway's data files: say so instead of failing somewhere later."""


def data_dir(name: str) -> Path:
    packaged = resources.files("gateway") / name
    if packaged.is_dir():
        return Path(str(packaged))
    source = Path(__file__).resolve().parent.parent / name
    if source.is_dir():
        return source
    raise MissingFiles(f"the gateway's {name}/ folder is missing from this install; reinstall sharekey")
