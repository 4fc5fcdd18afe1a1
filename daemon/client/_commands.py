"""The client side of the `ingestd` command: upload, status, ls, rm, download, login.

Output for people and for scripts alike: ids and JSON on stdout, messages and
progress on stderr; nothing truncated or wrapped when stdout is not a
terminal; the exit status says what went wrong (EXIT_CODES).

The commands are in `_transfer_commands` (upload, download) and
`_file_commands` (status, ls, rm, login, logout); this module builds their
parsers, and gives daemon/cli.py the exit statuses it shares with them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from . import _login as user_config
from ._exit import EXIT_CODES, INTERRUPTED, USAGE, UsageError

__all__ = ["EXIT_CODES", "INTERRUPTED", "USAGE", "UsageError", "add_commands"]


# -- the parser ------------------------------------------------------------


def _later(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command that imports its module (httpx and the client) only when it runs."""

    def run(args: argparse.Namespace) -> int:
        return getattr(_import_for_the_cli(f"{__package__}.{module}"), name)(args)

    return run


# Optional imports of httpx and httpcore that a command never uses and that
# cost most of the CLI's start-up where they are installed (the daemon's own
# dependencies): httpx's command line (click, rich, pygments) and httpcore's
# async back-ends (trio, anyio). Hidden only in the CLI's process, which runs
# one synchronous command; library users of `Client` get httpx unchanged.
_UNUSED_BY_THE_CLI = ("httpx._main", "trio", "anyio")


def _import_for_the_cli(module: str) -> object:
    hidden = [name for name in _UNUSED_BY_THE_CLI if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` fail
    try:
        importlib.import_module("httpcore")  # its back-ends are chosen at import
        return importlib.import_module(module)
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help="the daemon's address, e.g. http://127.0.0.1:8000 (a trailing / or /v1 is fine; "
        "default: $INGESTD_URL, else the one `ingestd login` saved, else "
        f"{user_config.DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        help="bearer token (default: $INGESTD_TOKEN, else the one `ingestd login` saved)",
    )
    parser.add_argument(
        "--cacert",
        metavar="PATH",
        help="CA certificate (PEM) to trust for an https:// URL, e.g. a self-signed "
        "daemon's (default: $INGESTD_CACERT, else the saved one, else the system's)",
    )


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=78)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The client's commands, in the order `ingestd --help` lists them."""
    formatter = argparse.RawDescriptionHelpFormatter
    _add_upload(sub, formatter)
    _add_status(sub, formatter)
    _add_download(sub, formatter)
    _add_file_commands(sub)


def _add_upload(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    up = sub.add_parser(
        "upload",
        help="upload files and directories (resumable, idempotent)",
        formatter_class=formatter,
        description=_wrap(
            "Upload files and directories (recursively) to the daemon, sending only "
            "the chunks it does not have, then wait for its plugins' verdict. An interrupted "
            "upload resumes when the same command is run again. A file whose name and content "
            "the tenant already has accepted is answered with that file, sending nothing "
            "(--new makes a new record). Prints each file's id on stdout (--json: one JSON "
            "object per file), the progress and the verdict on stderr."
        ),
        epilog=EXIT_CODES,
    )
    up.add_argument("paths", nargs="+", metavar="PATH", help="files and directories to upload")
    up.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="in directories, only files whose path (inside the directory) or name matches, "
        "e.g. '*.jsonl' (repeatable)",
    )
    up.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help="in directories, skip files whose path or name matches (repeatable; wins over "
        "--include)",
    )
    up.add_argument(
        "--dry-run",
        action="store_true",
        help="say what would be sent and how much the server already has; send nothing",
    )
    up.add_argument(
        "--new", action="store_true", help="a new file record even if the same is accepted"
    )
    _server_options(up)
    up.add_argument(
        "--parallel", type=_positive, default=5, help="chunks sent at once (default: 5)"
    )
    up.add_argument(
        "--chunking",
        choices=("cdc", "fixed"),
        default="cdc",
        help="content-defined (dedups shifted data) or fixed-size chunks (default: cdc)",
    )
    up.add_argument("--metadata", metavar="JSON", help="a JSON object stored with each file")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress, only ids and errors")
    up.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per file (JSON lines): file, upload and job ids, state, "
        "verdict, findings, bytes sent and already on the server; no progress",
    )
    up.set_defaults(func=_later("_transfer_commands", "upload"))


def _add_status(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    st = sub.add_parser(
        "status",
        help="an upload's or a file's state, missing chunks, job, verdict and findings",
        formatter_class=formatter,
        epilog=EXIT_CODES,
    )
    st.add_argument("id", metavar="UPLOAD_OR_FILE_ID")
    _server_options(st)
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.set_defaults(func=_later("_file_commands", "status"))


def _add_download(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    dl = sub.add_parser(
        "download",
        help="download a file, verified by its BLAKE3 as it is written",
        formatter_class=formatter,
        description=_wrap(
            "Download a file, verifying its BLAKE3 as it is written. Never overwrites an "
            "existing file without --force; an interrupted download resumes where it stopped "
            "when run again."
        ),
        epilog=EXIT_CODES,
    )
    dl.add_argument("file_id", metavar="FILE_ID")
    dl.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        type=Path,
        help="where to write it (a file or an existing directory; default: its name, here)",
    )
    dl.add_argument("-f", "--force", action="store_true", help="overwrite an existing file")
    dl.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _server_options(dl)
    dl.set_defaults(func=_later("_transfer_commands", "download"))


def _add_file_commands(sub: argparse._SubParsersAction) -> None:
    """ls, rm, login and logout."""
    lister = sub.add_parser("ls", help="list files with their state and verdict")
    lister.add_argument("--prefix", help="only files whose name starts with this")
    lister.add_argument(
        "--state", choices=("processing", "accepted", "rejected"), help="only files in this state"
    )
    _server_options(lister)
    lister.add_argument("--json", action="store_true", help="one JSON object per file")
    lister.set_defaults(func=_later("_file_commands", "ls"))

    remove = sub.add_parser("rm", help="delete files (their ids are printed once deleted)")
    remove.add_argument("file_ids", nargs="+", metavar="FILE_ID")
    _server_options(remove)
    remove.set_defaults(func=_later("_file_commands", "rm"))

    log_in = sub.add_parser(
        "login",
        help="remember the daemon's URL and token for later commands",
        description="Check the URL and token against the daemon, then save them in "
        f"{user_config.login_path()} (readable by you only), so that later commands and "
        "Client() need neither. $INGESTD_URL and $INGESTD_TOKEN still win.",
    )
    log_in.add_argument("url", metavar="URL")
    log_in.add_argument("--token", help="bearer token (asked for on a terminal if not given)")
    log_in.add_argument("--cacert", metavar="PATH", help="CA certificate (PEM) to trust")
    log_in.set_defaults(func=_later("_file_commands", "login"))

    log_out = sub.add_parser("logout", help="forget what `ingestd login` saved")
    log_out.set_defaults(func=_later("_file_commands", "logout"))
