"""Numbers from clients (in paths, form fields and headers), checked before use.

Python's `int()` and `str.isdigit()` accept far more than a client should
send ("²", "①", "٣", "1_000", " 7", thousands of digits); every count the
daemon reads goes through `parse_count`. (Names are checked by the upload
core: `core.ingest.check_filename`.)
"""

from __future__ import annotations

import re

from .errors import ApiError

# At most 19 ASCII digits: every such number fits in 64 bits.
_COUNT = re.compile(r"[0-9]{1,19}")


def parse_count(text: str, what: str, code: str = "invalid_field") -> int:
    """A non-negative decimal integer of ASCII digits; 400 naming `what` otherwise."""
    if not _COUNT.fullmatch(text):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise ApiError(
            400, code, f"{what} must be a non-negative integer of at most 19 digits, not {shown!r}"
        )
    return int(text)
