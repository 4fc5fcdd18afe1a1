"""The Python client of ingestd (and the CLI's upload, download and file commands).

It talks to a daemon over HTTP only and imports nothing of the server, so a
teammate's install needs none of it::

    from ingestd.daemon.client import Client
    with Client("http://127.0.0.1:8000", token=...) as client:
        result = client.upload("train.jsonl")
"""

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
