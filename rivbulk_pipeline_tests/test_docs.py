"""The docs say what the tree holds: docs/layout.md names every module of the package, and every
module it names exists; the README links to each doc, and each exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYOUT = (REPO / "docs" / "layout.md").read_text()


def test_every_module_of_the_package_is_in_the_layout() -> None:
    modules = {
        p.name for p in (REPO / "rivbulk_pipeline").rglob("*.py") if p.name not in ("__init__.py", "__main__.py")
    }
    missing = {m for m in modules if not re.search(rf"\b{re.escape(m)}\b", LAYOUT)}
    assert not missing, f"docs/layout.md does not name {sorted(missing)}"


def test_every_module_the_layout_names_exists() -> None:
    named = set(re.findall(r"\b([a-z_]+\.py)\b", LAYOUT))
    existing = {p.name for p in REPO.rglob("*.py") if ".venv" not in p.parts}
    assert named and not named - existing, f"docs/layout.md names {sorted(named - existing)}, which do not exist"


def test_the_readme_is_short_and_links_to_every_doc() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    docs = {p.name for p in (REPO / "docs").glob("*.md")}
    linked = set(re.findall(r"\(docs/([a-z_]+\.md)\)", readme))
    assert linked == docs, (sorted(docs - linked), sorted(linked - docs))
