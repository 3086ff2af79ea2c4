"""The documentation's shape: README.md is a front door whose first screen shows what flamediff is,
a picture and the commands to run, and every relative link in README.md and docs/*.md (files and
#anchors) leads somewhere in the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FIRST_SCREEN_LINES = 40
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans, where links are links."""
    kept, fence = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if not fence:
            kept.append(line)
    return re.sub(r"`[^`]*`", "", "\n".join(kept))


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page (lower case, punctuation dropped, spaces to -)."""
    seen: dict[str, int] = {}
    anchors = set()
    fence = False
    for line in page.read_text(encoding="utf-8").split("\n"):
        if line.lstrip().startswith("```"):
            fence = not fence
        match = None if fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(page: Path) -> list[str]:
    return LINK.findall(_prose(page.read_text(encoding="utf-8")))


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The relative links of ``page`` whose file is not in ``root`` or whose #anchor is not a heading."""
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page.resolve()
        if not resolved.is_relative_to(root.resolve()) or not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading with that anchor in {resolved.name}")
    return broken


@pytest.mark.parametrize("page", _pages(), ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} links to files or headings that do not exist"


def test_a_broken_link_or_anchor_is_caught(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A section: with (punctuation)\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md) [ok](other.md#a-section-with-punctuation) ![gone](gone.png)\n"
                    "[no anchor](other.md#missing) [outside](../elsewhere.md)\n"
                    "`[in code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n[web](https://example.org)\n")
    assert broken_links(page, root=tmp_path) == ["gone.png: no such file",
                                                 "other.md#missing: no heading with that anchor in other.md",
                                                 "../elsewhere.md: no such file"]


def test_every_docs_page_is_reachable_from_the_readme() -> None:
    reached, todo = set(), [README.resolve()]
    while todo:
        page = todo.pop()
        if page in reached:
            continue
        reached.add(page)
        for target in _links(page):
            path = target.partition("#")[0]
            linked = (page.parent / path).resolve()
            if path.endswith(".md") and linked.exists():
                todo.append(linked)
    unreached = [str(page.relative_to(ROOT)) for page in _pages() if page.resolve() not in reached]
    assert unreached == [], "docs pages no link from README.md leads to"


def test_first_screen_has_the_picture_and_the_three_commands() -> None:
    screen = "\n".join(README.read_text(encoding="utf-8").split("\n")[:FIRST_SCREEN_LINES])
    pictures = [target for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", screen)
                if target.endswith(".png") and (ROOT / target).is_file()]
    assert pictures, "no picture on the README's first screen"
    blocks = re.findall(r"```sh\n(.*?)```", screen, re.DOTALL)
    commands = [line.split("#")[0].strip() for block in blocks for line in block.split("\n")]
    for command in ("make demo", "make test", "python3 build_addon.py"):
        assert command in commands, f"{command!r} is not a command on the README's first screen"
    assert "Install from Disk" in screen, "the first screen does not say how to install the add-on zip"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_readme_make_targets_exist() -> None:
    result = subprocess.run(["make", "-n", "demo", "test"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "MAKEFLAGS": ""})
    assert result.returncode == 0, result.stderr
    assert "build_addon.py" in result.stdout and "flamediff demo" in result.stdout
    assert "pytest" in result.stdout
