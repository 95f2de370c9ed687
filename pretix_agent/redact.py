"""Passwords out of every text that is printed or logged: URLs and libpq keyword DSNs.

A password may hold any character, `@`, `/` and spaces included (libpq and redis-py take them
percent-encoded or not), so the password of a URL runs to the LAST `@` of its line: hiding a
little too much in an error message is harmless, showing half a password is not.
"""

from __future__ import annotations

import re

# postgresql://user:secret@host/db, redis://:secret@host; the user may hold "@", the password anything.
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/\s]*):(?P<pw>.*)@", re.IGNORECASE)
# libpq keyword DSN: password=secret or password='sec ret'
_KV_PASSWORD = re.compile(r"(?P<key>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)


def redact_text(text: str) -> str:
    """Given any text, return it with URL and libpq DSN passwords replaced by ***."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _KV_PASSWORD.sub(lambda m: f"{m['key']}***", text)
