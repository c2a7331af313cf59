"""Every relative link of the README, the guides and docs/ reaches a file, and its #anchor a heading
of that file (GitHub's anchor rule), so moving a section cannot leave a dead link behind."""
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "guides").glob("*.md")), *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"^```.*?^```", flags=re.S | re.M)


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code (links there are examples, not links)."""
    return re.sub(r"`[^`\n]*`", "", CODE_BLOCK.sub("", text))


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.lru_cache(maxsize=None)  # read each linked document once
def anchors(path: Path) -> set:
    found, seen = set(), {}
    for line in CODE_BLOCK.sub("", path.read_text()).splitlines():
        if line.startswith("#"):
            anchor = github_anchor(line.lstrip("#"))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def test_the_anchor_rule_matches_githubs():
    assert github_anchor(" Early stopping (`--early-stop-patience`)") == "early-stopping---early-stop-patience"
    assert github_anchor("Do the monitors tell the truth? (`monitor_alarms.py`)") == \
        "do-the-monitors-tell-the-truth-monitor_alarmspy"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_reaches_its_file_and_heading(document):
    dead = []
    for target in LINK.findall(prose(document.read_text())):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if not path.exists():
            dead.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            dead.append(f"{target}: no heading with this anchor")
    assert not dead, f"{document.relative_to(ROOT)}: {dead}"
