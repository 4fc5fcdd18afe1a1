"""Sizes and tables as the commands print them (the data-dir commands too)."""

from __future__ import annotations


def human_size(n: float) -> str:
    """Bytes in binary units, one decimal: 2.9 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def printable(text: str) -> str:
    """`text` safe to show in a terminal: controls, bidi and other format
    characters, and line separators escaped (a tab as \\t, DEL as \\x7f,
    U+202E as \\u202e); names are recorded as they were sent."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def printable_json(text: str) -> str:
    """JSON text (of `json.dumps(..., ensure_ascii=False)`) with what
    `printable` escapes written as JSON escapes: such characters can only be
    inside its strings."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _json_escape(c) for c in text)


def _json_escape(c: str) -> str:
    code = ord(c)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def print_table(rows: list[tuple[str, ...]]) -> None:
    """Rows (the first one the header) in left-aligned columns, whole, unwrapped."""
    rows = [tuple(printable(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
