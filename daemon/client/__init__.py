"""The Python client of ingestd (and the CLI's upload, download and file commands).

It talks to a daemon over HTTP only and imports nothing of the server, so a
teammate's install needs none of it::

    from ingestd.daemon.client import Client
    with Client("http://127.0.0.1:8000", token=...) as client:
        result = client.upload("train.jsonl")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._client import Client
    from ._collect import collect
    from ._exceptions import (
        CertificateError,
        ConnectionFailed,
        ContractError,
        DestinationExists,
        DownloadError,
        IngestdError,
        ProblemError,
        Rejected,
        UploadError,
    )
    from ._models import (
        FileInfo,
        JobInfo,
        Planned,
        Status,
        UploadResult,
        UploadStatus,
        findings_in_words,
        verdict_in_words,
    )

# Where each public name lives. They are imported when first used, so that
# `ingestd --version` and the CLI's start-up do not pay for httpx.
_HOMES = {
    "Client": "_client",
    "collect": "_collect",
    **dict.fromkeys(
        [
            "CertificateError",
            "ConnectionFailed",
            "ContractError",
            "DestinationExists",
            "DownloadError",
            "IngestdError",
            "ProblemError",
            "Rejected",
            "UploadError",
        ],
        "_exceptions",
    ),
    **dict.fromkeys(
        [
            "FileInfo",
            "JobInfo",
            "Planned",
            "Status",
            "UploadResult",
            "UploadStatus",
            "findings_in_words",
            "verdict_in_words",
        ],
        "_models",
    ),
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


__all__ = [
    "Client",
    "ConnectionFailed",
    "CertificateError",
    "ContractError",
    "DestinationExists",
    "DownloadError",
    "FileInfo",
    "IngestdError",
    "JobInfo",
    "Planned",
    "ProblemError",
    "Rejected",
    "Status",
    "UploadError",
    "UploadResult",
    "UploadStatus",
    "collect",
    "findings_in_words",
    "verdict_in_words",
]
