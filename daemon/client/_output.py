"""Sizes and tables as the commands print them (the data-dir commands too)."""

from __future__ import annotations


def human_size(n: float) -> str:
    """Bytes in binary units, one decimal: 2.9 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def print_table(rows: list[tuple[str, ...]]) -> None:
    """Rows (the first one the header) in left-aligned columns, whole, unwrapped."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
