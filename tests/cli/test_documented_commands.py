"""Every command written in README.md and guides/*.md parses with the real CLI parser."""
import re
import shlex
from pathlib import Path

import pytest

from train_ultimate import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "guides").glob("*.md"))]


def documented_commands():
    """(document, argv after train_ultimate.py) for every python/torchrun invocation in code blocks."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        # Every fence is matched with its language (python blocks too), so blocks pair up correctly.
        for language, block in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S):
            if language not in ("", "bash", "sh", "shell"):
                continue
            for command in block.replace("\\\n", " ").splitlines():
                if "train_ultimate.py" not in command:  # log excerpts may hold a lone apostrophe
                    continue
                words = shlex.split(command, comments=True)
                launcher = words[0] if words else ""
                if "train_ultimate.py" in words and (launcher.endswith(("python", "python3")) or launcher == "torchrun"):
                    found.append((document.name, words[words.index("train_ultimate.py") + 1:]))
    return found


COMMANDS = documented_commands()


def test_documents_contain_commands():
    assert len(COMMANDS) >= 5


@pytest.mark.parametrize("document, argv", COMMANDS, ids=[f"{d}:{' '.join(a[:3])}" for d, a in COMMANDS])
def test_command_parses(document, argv):
    args = build_parser().parse_args(argv)
    for name in ("config",):
        value = getattr(args, name, None)
        if value:
            assert (ROOT / value).exists(), f"{document} references missing {value}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=[d.name for d in DOCUMENTS])
def test_linked_files_and_images_exist(document):
    for target in re.findall(r"\]\(([^)#\s]+)\)", document.read_text()):
        if "://" in target:
            continue
        assert (document.parent / target).exists(), f"{document.name} links to missing {target}"
