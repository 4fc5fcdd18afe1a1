"""Fixtures of the plugin tests: a private clamd with default limits, and one
with tiny limits (tests/support/clamd.py starts and stops them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.clamd import Clamd, start_clamd, stop_clamd


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    """A clamd with default limits, shared by a test module."""
    daemon = start_clamd(tmp_path_factory.mktemp("clamd"))
    try:
        yield daemon
    finally:
        stop_clamd(daemon)


@pytest.fixture(scope="module")
def clamd_limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    """A clamd with tiny limits: streams over 8 KiB are refused (StreamMaxLength);
    files over 2 KiB are not scanned in full and, with AlertExceedsMax, reported
    as "Heuristics.Limits.Exceeded.*" instead of a silent "OK"."""
    daemon = start_clamd(
        tmp_path_factory.mktemp("clamd-limited"),
        StreamMaxLength="8K",
        MaxFileSize="2K",
        MaxScanSize="2K",
        AlertExceedsMax="yes",
    )
    try:
        yield daemon
    finally:
        stop_clamd(daemon)
