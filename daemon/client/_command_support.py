"""What the client's commands share: their exit statuses (EXIT_CODES), usage
errors, messages on stderr, ids and JSON lines on stdout, and the Client their
options make.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ._client import Client
from ._exceptions import ConnectionFailed, ProblemError, Rejected
from ._exit import (  # noqa: F401  (re-exported for the commands)
    _SEVERITY,
    AUTH,
    EXIT_CODES,
    FAILED,
    INTERRUPTED,
    OK,
    REJECTED,
    UNREACHABLE,
    USAGE,
    UsageError,
)
from ._output import printable, printable_json


def exit_code(exc: BaseException) -> int:
    """The exit status an error means (see EXIT_CODES)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, Rejected):
            return REJECTED
        if isinstance(seen, ProblemError) and seen.status in (401, 403):
            return AUTH
        if isinstance(seen, ConnectionFailed):
            return UNREACHABLE
        seen = seen.__cause__
    return FAILED


def worst(codes: list[int]) -> int:
    return min(codes or [OK], key=_SEVERITY.index)


def _say(message: str) -> None:
    shown = "\n".join(printable(line) for line in message.split("\n"))
    print(f"ingestd: {shown}", file=sys.stderr, flush=True)


def _print_json(obj: object) -> None:
    sys.stdout.write(printable_json(json.dumps(obj, ensure_ascii=False)) + "\n")
    sys.stdout.flush()


def _print_id(value: str) -> None:
    sys.stdout.write(value + "\n")
    sys.stdout.flush()


def _quiet_httpx(args: argparse.Namespace) -> None:
    if not args.verbose:
        # httpx logs every request at INFO; an upload makes thousands.
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _client(args: argparse.Namespace, **options: Any):
    _quiet_httpx(args)
    try:
        # Client resolves what is not given: the environment, then the login file.
        return Client(args.url, token=args.token, verify=args.cacert or True, **options)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _metadata(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.metadata is None:
        return None
    try:
        metadata = json.loads(args.metadata)
    except ValueError as exc:
        raise UsageError(f"--metadata is not JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise UsageError("--metadata must be a JSON object")
    return metadata
