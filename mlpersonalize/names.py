"""File names as text: the one escape used wherever a name reaches JSON, a table or a manifest."""

from __future__ import annotations

import os


def escape(text: str) -> str:
    """A file name as valid UTF-8 text: bytes that were not UTF-8 become ``\\xNN``.

    Python hands undecodable bytes over as lone surrogates, which UTF-8 cannot encode and
    which a JSON ``\\udcff`` escape would carry to the reader; ``\\xNN`` text survives both.
    """
    return os.fsencode(text).decode("utf-8", "backslashreplace")
