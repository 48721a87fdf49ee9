"""docs/deployment.md as an operator reads it: every command of its ``sh`` and ``console`` blocks, in order.

In a ``console`` block a command starts with a prompt (``# `` as root, ``$ `` as a user) and goes on over lines that
end in ``\\``; other lines are output. In an ``sh`` block every line is a command (same continuations). The text of a
command is kept as written (continuations included), so ``bash -c`` runs exactly what the operator would type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[2] / "docs/deployment.md"


@dataclass(frozen=True)
class Command:
    section: str  # the heading it is under, e.g. "1. Install"
    block: str  # "sh" or "console"
    prompt: str  # "#" (root), "$" (user) or "" (an sh block)
    text: str

    @property
    def words(self) -> list[str]:
        return self.text.split()


def commands(markdown: str | None = None) -> list[Command]:
    """Every command of the guide, in order."""
    text = GUIDE.read_text() if markdown is None else markdown
    found: list[Command] = []
    section = ""
    block: str | None = None
    current: list[str] = []
    prompt = ""
    for line in text.splitlines():
        if block is None:
            if line.startswith("## "):
                section = line[3:].strip()
            elif match := re.fullmatch(r"```(sh|console)", line.strip()):
                block = match.group(1)
            continue
        if line.strip() == "```":
            block = None
            continue
        if current:  # a continuation of the previous line
            current.append(line)
        elif block == "console" and line[:2] in ("# ", "$ "):
            prompt, current = line[0], [line[2:]]
        elif block == "sh" and line.strip():
            prompt, current = "", [line]
        if current and not current[-1].rstrip().endswith("\\"):
            found.append(Command(section, block, prompt, "\n".join(current)))
            current = []
    return found


def ini_block(section: str, markdown: str | None = None) -> str:
    """The ``ini`` block of a section (a drop-in the guide says to add), as written."""
    text = GUIDE.read_text() if markdown is None else markdown
    part = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```ini\n(.*?)```", part, re.S)
    assert len(blocks) == 1, f"section {section!r} has {len(blocks)} ini blocks"
    return str(blocks[0])
