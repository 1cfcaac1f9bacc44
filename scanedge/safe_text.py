"""One line of plain text from text that came from outside: a peer's string, a DICOM value, a remote server's
error message.

Such text reaches a terminal (a log tailed in a console, ``journalctl``) and the console that gets the
reply. ANSI escape sequences in it could recolour, hide or rewrite what an operator reads; a newline could
forge a log line of its own; bidirectional overrides could make a UID read backwards. :func:`printable`
removes escape sequences whole, turns line breaks and tabs into spaces and drops every other control or
format character, so the text stays one honest line. The log formatter of the CLI commands runs every
message through it, and so do the replies (the runtime's ERROR messages, the DICOM node's Error Comment)
and the remote engine where it quotes its server.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["printable"]

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), DCS/SOS/PM/APC strings (ESC P/X/^/_ ... ST), other
# two- or three-byte ESC sequences, and the 8-bit CSI; an unterminated one is removed to the end.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|\x9b[0-?]*[ -/]*[@-~]?"
)
_SPACES = frozenset("\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


def _keep(c: str) -> str:
    if c in _SPACES:
        return " "
    return "" if unicodedata.category(c)[0] == "C" else c  # Cc, Cf (bidi, zero-width), Cs, Co, Cn


def printable(text: object, limit: int | None = None) -> str:
    """``str(text)`` as one line without escape sequences or control characters, at most ``limit``
    characters (cut with ``...``). Plain printable text comes back unchanged."""
    s = text if isinstance(text, str) else str(text)
    if not s.isprintable():
        s = "".join(_keep(c) for c in _ESCAPES.sub("", s))
    if limit is not None and len(s) > limit:
        s = s[: max(0, limit - 3)] + "..."
    return s
