"""mkdocs hook: drop nav entries whose page does not exist (yet).

The nav in mkdocs.yml lists every planned page in reading order. Framework and
deployment pages are written alongside the code they describe; until one exists
its entry is left out instead of failing ``mkdocs build --strict``, and once it
exists it appears in its planned place with no change to mkdocs.yml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def prune(items: list[Any], docs_dir: Path) -> list[Any]:
    """The nav ``items`` without entries naming a missing page (empty sections too)."""
    kept: list[Any] = []
    for item in items:
        if isinstance(item, str):
            if (docs_dir / item).is_file():
                kept.append(item)
            continue
        ((title, value),) = item.items()
        if isinstance(value, str):
            if "://" in value or (docs_dir / value).is_file():
                kept.append(item)
        else:
            section = prune(value, docs_dir)
            if section:
                kept.append({title: section})
    return kept


def on_config(config: Any) -> Any:
    if config["nav"]:
        config["nav"] = prune(config["nav"], Path(config["docs_dir"]))
    return config
