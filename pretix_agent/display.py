"""Text that reaches an operator's terminal: made safe, and said one way everywhere.

Lock reasons, user names, probe reasons and haproxy's words come from files and servers that
members of the operators' group (or anyone who can make a server answer) control. Printed raw, an
escape sequence clears root's screen or a newline fakes a status line, so every such text goes
through `printable` before it is shown: control characters appear escaped (`\\x1b`, `\\n`), never
interpreted.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """Given any text, return it with every control or format character shown as an escape
    (C0, DEL, C1, and Unicode format characters such as bidi overrides), so it prints as one line."""
    out = []
    for char in text:
        if char in _NAMED:
            out.append(_NAMED[char])
        elif unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def holder(by: str | None, at: str | None, reason: str | None, problem: str | None = None) -> str:
    """Who, when and why, for a lock or a drain request: "by alice at 2026-12-02T06:00:00+00:00
    (db upgrade)"; "" when the file said nothing (an empty file from `touch`)."""
    parts = []
    if by:
        parts.append(f"by {by}")
    if at:
        parts.append(f"at {at}")
    if reason:
        parts.append(f"({reason})")
    if problem:
        parts.append(f"(content unreadable: {problem})")
    return " ".join(parts)
