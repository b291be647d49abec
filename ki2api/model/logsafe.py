"""Values from clients, made safe to log: one log line stays one line, with the fields it had.

A request path may hold any character once percent-decoded (``%0A`` is a newline), and a model
or tool name is whatever the client sent. Written into a log as they are, a newline forges a
whole log line and a space a ``key=value`` field of the access log. :func:`printable` escapes
both, and every other character that is not printable, the way Python writes them in a string
literal, and bounds the length.
"""

from __future__ import annotations

import re

MAX_LOGGED_CHARS = 512


def printable(value: object) -> str:
    """``value`` as text with no control characters, line breaks or spaces left in it."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable() and " " not in text and len(text) <= MAX_LOGGED_CHARS:
        return text  # the usual case, checked at C speed
    if len(text) > MAX_LOGGED_CHARS:
        text = text[:MAX_LOGGED_CHARS]
        cut = "…"
    else:
        cut = ""
    return "".join(_escape(ch) for ch in text) + cut


def _escape(ch: str) -> str:
    if ch.isprintable() and ch != " ":
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


# A file path in a note (a login file that is missing or unreadable): "/...", "~/...", "C:\\...".
# Not after a letter, "/" or ":", so "and/or" and URLs are left alone.
_PATH = re.compile(r"(?<![\w/:.])(?:~?/|[A-Za-z]:[\\/])[^\s'\"()]*")


def hide_paths(text: str) -> str:
    """Clients and the page's visitors see the state of an account, never where its files are
    on the server: a path becomes its file name."""

    def name_only(match: re.Match[str]) -> str:
        path = match.group(0)
        tail = path.rstrip(".,;")
        name = re.split(r"[\\/]", tail.rstrip("/\\"))[-1]
        return f"…/{name}{path[len(tail) :]}" if name else "…"

    return _PATH.sub(name_only, text)
