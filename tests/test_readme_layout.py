"""README's Layout block names every folder and module of `trainers/` and `sweep/`, and no folder that
is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainers", "sweep")


def layout_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def named(block: str) -> set[str]:
    """Every bare word of the block, `.py` dropped: module and folder names as README writes them."""
    return {word.removesuffix(".py").rstrip("/") for word in re.findall(r"[A-Za-z_][\w.]*/?", block)}


def test_readme_layout_names_every_module_and_folder():
    words = named(layout_block())
    modules = {
        path.stem if path.name != "__init__.py" else path.parent.name
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
    }
    assert modules - words == set(), "modules README's Layout leaves out"


def test_readme_layout_names_only_folders_that_exist():
    block = layout_block()
    folders = {match.rstrip("/") for match in re.findall(r"^\s*([\w]+/)", block, flags=re.M)}
    assert {"trainers", "sweep", "model", "detector", "speech", "space", "tests"} <= folders
    missing = {f for f in folders if not any(p.is_dir() for p in ROOT.rglob(f) if ".venv" not in p.parts)}
    assert missing == set()
