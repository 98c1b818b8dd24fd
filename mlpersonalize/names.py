"""File names as text: the one escape used wherever a name reaches JSON, a table or a manifest."""

from __future__ import annotations

import os


def escape(text: str) -> str:
    """A file name as valid UTF-8 text: bytes that were not UTF-8 become ``\\xNN``.

    Python hands undecodable bytes over as lone surrogates, which UTF-8 cannot encode and
    which a JSON ``\\udcff`` escape would carry to the reader; ``\\xNN`` text survives both.
    """
    return os.fsencode(text).decode("utf-8", "backslashreplace")


# Bidirectional overrides and isolates reorder what a terminal shows; line and paragraph
# separators break lines as a newline does. They are escaped with the control characters.
_INVISIBLE = frozenset(range(0x202A, 0x202F)) | frozenset(range(0x2066, 0x206A)) | {0x2028, 0x2029}
_SHORT = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _quote_char(char: str, backslash: bool = True) -> str:
    if char in _SHORT and (backslash or char != "\\"):
        return _SHORT[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if 0x80 <= code < 0xA0 or code in _INVISIBLE or 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return char


def quote(text: str, backslash: bool = True) -> str:
    """A name (file, label, path) as one line of printable text that reads back unambiguously.

    The one escape used for everything a user's file system or batch supplies on its way to a
    terminal, a TSV line or a JSON Lines value (README, "Output formats"):
    a backslash becomes ``\\\\``; tab, newline, carriage return ``\\t`` ``\\n`` ``\\r``; other
    control characters (ESC included) ``\\xNN``; a byte that was not UTF-8 ``\\xNN`` too (its
    value, 80–ff); C1 controls, bidirectional overrides and line separators ``\\uNNNN``.
    A literal ``x\\xe9.png`` therefore prints as ``x\\\\xe9.png`` and the byte name as ``x\\xe9.png``.

    ``backslash=False`` leaves backslashes alone: for text already passed through :func:`escape`
    (messages, prepare's report), made terminal-safe without doubling its ``\\xNN``.
    """
    if text.isprintable() and (not backslash or "\\" not in text):
        return text
    return "".join(_quote_char(c, backslash) for c in text)


def unquote(text: str) -> str:
    """The inverse of :func:`quote` (bytes that were not UTF-8 come back as surrogates)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\" or i + 1 >= len(text):
            out.append(char)
            i += 1
            continue
        kind = text[i + 1]
        if kind in "\\tnr":
            out.append({"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}[kind])
            i += 2
        elif kind == "x":
            value = int(text[i + 2 : i + 4], 16)
            out.append(chr(value) if value < 0x80 else chr(0xDC00 + value))
            i += 4
        elif kind == "u":
            out.append(chr(int(text[i + 2 : i + 6], 16)))
            i += 6
        else:
            out.append(char)
            i += 1
    return "".join(out)
