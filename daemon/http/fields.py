"""Values from clients, checked before anything uses them: numbers in paths,
form fields and headers, and file names.

Python's `int()` and `str.isdigit()` accept far more than a client should
send ("²", "①", "٣", "1_000", " 7", thousands of digits); every count the
daemon reads goes through `parse_count`. Names lose the characters that
would corrupt a log line, a header or a terminal (controls, bidi overrides).
"""

from __future__ import annotations

import re
import unicodedata

from ingestd import cas

from .errors import ApiError

# At most 19 ASCII digits: every such number fits in 64 bits.
_COUNT = re.compile(r"[0-9]{1,19}")
# The characters the store keeps out of names on disk too.
_UNSAFE_NAME = re.compile(f"[{cas.UNREADABLE_CHARS}]")


def parse_count(text: str, what: str, code: str = "invalid_field") -> int:
    """A non-negative decimal integer of ASCII digits; 400 naming `what` otherwise."""
    if not _COUNT.fullmatch(text):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise ApiError(
            400, code, f"{what} must be a non-negative integer of at most 19 digits, not {shown!r}"
        )
    return int(text)


def clean_filename(name: str) -> str:
    """`name` without control or bidi-override characters (each becomes "_")."""
    return _UNSAFE_NAME.sub("_", unicodedata.normalize("NFC", name))
