"""The README and the pages in ``docs/``: every link leads somewhere, and the README stays
the first hour (the two set-up commands at the top, the rest one click away)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
# The team's "Two commands": what a fresh machine needs, word for word.
DEMO = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/mmolove-relay demo"
TEST = "scripts/test"
README_MAX_LINES = 300

FENCED = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text without code, where a ``](`` or a ``#`` is not Markdown."""
    return CODE_SPAN.sub("", FENCED.sub("", text))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings: lower case, punctuation dropped,
    spaces as hyphens, a repeated one numbered."""
    made: set[str] = set()
    for title in HEADING.findall(FENCED.sub("", page.read_text())):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        unique, repeat = slug, 0
        while unique in made:
            repeat += 1
            unique = f"{slug}-{repeat}"
        made.add(unique)
    return made


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """Each relative link on the page whose file (inside ``root``), or whose anchor in it,
    does not exist."""
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto: - not this repository's
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or root not in file.parents:
            broken.append(f"{target}: no file {file} in {root}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading in {file.name} makes #{anchor}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page: Path) -> None:
    assert broken_links(page) == []


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    """The check above can fail: a missing file, a missing heading and a way out of the
    repository are each reported; what exists is not."""
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "other.md").write_text("# Other page\n\n## A `code`: heading\n")
    (tmp_path / "outside.md").write_text("# Not this repository's\n")
    page = repo / "docs" / "page.md"
    page.write_text(
        "# Title\n\n[ok](#title) [ok](../other.md#a-code-heading) [web](https://x.test/y)\n"
        "[gone](missing.md) [no heading](#nowhere) [outside](../../outside.md)\n"
        "`[in code](missing.md)`\n"
    )
    found = [entry.split(": ")[0] for entry in broken_links(page, root=repo)]
    assert found == ["missing.md", "#nowhere", "../../outside.md"]


def test_every_page_in_docs_is_linked_from_the_readme() -> None:
    linked = {target.partition("#")[0] for target in LINK.findall(prose(README.read_text()))}
    pages = {f"docs/{page.name}" for page in PAGES[1:]}
    assert pages - linked == set(), "link each page in docs/ from the README's Read next"


def test_the_readme_is_the_first_hour() -> None:
    """The two set-up commands sit at the top, exactly; the rest lives in docs/."""
    lines = README.read_text().splitlines()
    top = [line.strip() for line in lines[:40]]
    assert DEMO in top
    assert TEST in top
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move a section "
        "to a page in docs/ and link it under Read next"
    )
