"""Turning what a server or library said into one safe line for a probe's reason."""

from __future__ import annotations

from collections.abc import Iterable


def one_line(text: str, limit: int = 200) -> str:
    """The first non-empty line of `text`, stripped, control characters (a server's garbage) shown
    as "?", cut to `limit` characters."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    line = "".join(char if char.isprintable() else "?" for char in line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (a password from a DSN or URL) replaced by "***"."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
