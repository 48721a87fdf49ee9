"""The one rule for text shown on a terminal: every character that is not printable (control characters, C1
codes, bidirectional overrides, line separators) is shown as its escape, ``\\x1b``, ``\\u202e``.

A manifest, an S3 key or a step's output can put anything into ``last_error``, a reason, a detail or a log line;
shown raw it could clear the screen, fake a prompt or reorder a line. The CLI's tables and messages
(``monitor.render``) and the daemon's console log (``monitor.logs``) all go through it. JSON needs nothing: it
escapes them itself.
"""

from __future__ import annotations


def for_terminal(value: object) -> str:
    """``value`` as text that a terminal shows and does not obey (a newline in it is escaped too)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


def lines_for_terminal(text: str) -> str:
    """``for_terminal`` for each line of a message (its own line breaks kept)."""
    return "\n".join(for_terminal(line) for line in text.split("\n"))


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
