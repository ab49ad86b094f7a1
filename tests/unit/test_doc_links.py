"""The README and the pages it links to: every relative link resolves to a file of this
repository (and every `#anchor` to a heading of its page), every page is linked from the
README, and the README stays short enough to read."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The pages for readers; each must be reachable from the README in one step.
PAGES = ("CONTRIBUTING.md", "docs/deploy.md", "docs/design.md", "docs/cost-and-speed.md",
         "imgpipe/local/README.md", "model/README.md", "bench/README.md")
README_MAX_LINES = 250
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text without its fenced code blocks and inline code, where brackets are code."""
    return re.sub(r"`[^`\n]*`", "", _strip_fences(text))


def links(page: str) -> list[str]:
    return LINK.findall(_prose((ROOT / page).read_text(encoding="utf-8")))


def anchors(page: Path) -> set[str]:
    """GitHub's ids for the page's headings: lower case, punctuation but '-' and '_' dropped,
    spaces to '-'."""
    ids = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _strip_fences(page.read_text("utf-8")),
                              flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        ids.add(slug)
    return ids


def _strip_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def test_every_relative_link_resolves() -> None:
    missing = []
    for page in ("README.md", *PAGES):
        for target in links(page):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = (ROOT / page).parent / path if path else ROOT / page
            if not resolved.resolve().is_file():
                missing.append(f"{page}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                missing.append(f"{page}: {target} (no such heading)")
    assert not missing, missing


def test_every_page_is_linked_from_the_readme() -> None:
    linked = {str(((ROOT / t.partition("#")[0]).resolve()).relative_to(ROOT))
              for t in links("README.md") if t.partition("#")[0]}
    assert not [page for page in PAGES if page not in linked]
    docs = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")}
    assert docs <= set(PAGES), docs - set(PAGES)


def test_the_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, lines


def test_the_checker_reads_links_and_headings_as_written() -> None:
    """The two checks above would pass on pages with no links at all; this shows they read
    links and anchors as written on the pages."""
    assert "docs/deploy.md#parameters" in links("README.md")
    assert "parameters" in anchors(ROOT / "docs" / "deploy.md")
    assert "try-it-on-your-machine-no-aws-account" in anchors(ROOT / "README.md")
    assert "not-a-heading" not in anchors(ROOT / "docs" / "deploy.md")
