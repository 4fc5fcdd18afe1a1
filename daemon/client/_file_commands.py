"""The commands about files already on the daemon and about logging in to it:
`ingestd status`, `ls`, `rm`, `login` and `logout`."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from pathlib import Path

import msgspec

from . import _login as user_config
from ._client import Client
from ._command_support import (
    OK,
    REJECTED,
    UsageError,
    _client,
    _print_id,
    _print_json,
    _quiet_httpx,
    _say,
    exit_code,
    worst,
)
from ._exceptions import IngestdError
from ._models import verdict_in_words
from ._output import human_size, print_table, printable_json

# -- status, ls, rm ----------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            found = client.status(args.id)
        except IngestdError as exc:
            _say(str(exc))
            return exit_code(exc)
    if args.json:
        _print_json(found.as_dict())
        return REJECTED if found.state == "rejected" else OK
    rows: list[tuple[str, str]] = []
    if found.file is not None:
        f = found.file
        rows += [("file", f.id), ("filename", f.filename), ("size", _size_both(f.size))]
        rows += [("blake3", f.blake3), ("upload", f.upload_id)]
    if found.upload is not None:
        u = found.upload
        rows += [("upload", u.id), ("filename", u.filename), ("size", _size_both(u.size))]
        rows.append(("chunks", f"{u.received_chunks:,} of {u.total_chunks:,} received"))
        if u.state == "open":
            rows.append(("missing", _ranges(u.missing) or "none: ready to complete"))
    rows.append(("state", found.state))
    if found.job is not None:
        rows.append(("job", f"{found.job.id} ({found.job.state})"))
    rows.append(("verdict", found.summary))
    seen = set()
    for key, value in rows:
        if (key, value) in seen:
            continue
        seen.add((key, value))
        print(f"{key:<9} {value}")
    if found.job is not None and found.job.results:
        print("findings")
        for plugin, stages in sorted(found.job.results.items()):
            for stage, answer in sorted((stages or {}).items()):
                print(
                    f"  {plugin}.{stage}: {printable_json(json.dumps(answer, ensure_ascii=False))}"
                )
    return REJECTED if found.state == "rejected" else OK


def _size_both(n: int) -> str:
    return f"{n:,} bytes ({human_size(n)})"


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] → "0-2, 5, 7-8" (and how many)."""
    if not indices:
        return ""
    parts, start, prev = [], indices[0], indices[0]
    for i in [*indices[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        if i is not None:
            start = prev = i
    return f"{len(indices):,} chunks: {', '.join(parts)}"


def ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            files = client.files(prefix=args.prefix, state=args.state)
        except IngestdError as exc:
            _say(str(exc))
            return exit_code(exc)
    if args.json:
        for f in files:
            summary = verdict_in_words(f.state, f.reason, {}, f.described)
            _print_json({**msgspec.to_builtins(f), "summary": summary})
        return OK
    rows = [("id", "filename", "size", "state", "verdict", "created")]
    for f in files:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f.created or 0))
        verdict = verdict_in_words(f.state, f.reason, {}, f.described)
        verdict = verdict.removeprefix(f"{f.state}: ").removeprefix(f.state) or "-"
        rows.append((f.id, f.filename, human_size(f.size), f.state, verdict, created))
    print_table(rows)
    return OK


def rm(args: argparse.Namespace) -> int:
    codes = []
    with _client(args) as client:
        for file_id in args.file_ids:
            try:
                client.delete(file_id)
            except IngestdError as exc:
                _say(str(exc))
                codes.append(exit_code(exc))
                continue
            codes.append(OK)
            _print_id(file_id)
    return worst(codes)


# -- login -----------------------------------------------------------------


def login(args: argparse.Namespace) -> int:
    _quiet_httpx(args)
    try:
        url = user_config.normalise_url(args.url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    token = args.token
    if token is None and sys.stdin.isatty():
        token = getpass.getpass("token (empty if the daemon has auth off): ").strip() or None
    try:
        with Client(url, token=token or "", verify=args.cacert or True) as client:
            usage = client.usage()
    except IngestdError as exc:
        _say(f"not saved: {exc}")
        return exit_code(exc)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cacert = str(Path(args.cacert).resolve()) if args.cacert else None
    path = user_config.save_login(user_config.Login(url=url, token=token, cacert=cacert))
    _say(f"logged in to {url} as tenant {usage.get('tenant')!r}; saved in {path}")
    return OK


def logout(args: argparse.Namespace) -> int:
    path = user_config.login_path()
    if user_config.remove_login(path):
        _say(f"removed {path}")
    else:
        _say(f"not logged in ({path} does not exist)")
    return OK
