"""The client side of the `ingestd` command: upload, status, ls, rm, download, login.

Output for people and for scripts alike: ids and JSON on stdout, messages and
progress on stderr; nothing truncated or wrapped when stdout is not a
terminal; the exit status says what went wrong (EXIT_CODES).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import _login as user_config
from ._output import human_size, print_table

MiB = 1 << 20

OK, FAILED, USAGE, REJECTED, AUTH, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 4, 5, 130
EXIT_CODES = """\
exit status:
  0    done
  1    failed (the server refused a request, a download did not verify, ...)
  2    usage: bad arguments, a missing local file
  3    rejected: the file arrived and a plugin rejected it (the reason is printed)
  4    authentication: no token, a token not valid, or not allowed to do this
  5    the server could not be reached
  130  interrupted (Ctrl-C); run the same upload again to resume it
With several files, the most serious: 130, 4, 5, 1, then 3."""
_SEVERITY = [INTERRUPTED, AUTH, UNREACHABLE, FAILED, REJECTED, OK]


class UsageError(Exception):
    """Bad arguments or configuration: exit status 2."""


def exit_code(exc: BaseException) -> int:
    """The exit status an error means (see EXIT_CODES)."""
    from ._client import ConnectionFailed, ProblemError, Rejected

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
    print(f"ingestd: {message}", file=sys.stderr, flush=True)


def _print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _print_id(value: str) -> None:
    sys.stdout.write(value + "\n")
    sys.stdout.flush()


def _quiet_httpx(args: argparse.Namespace) -> None:
    if not args.verbose:
        # httpx logs every request at INFO; an upload makes thousands.
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _client(args: argparse.Namespace, **options: Any):
    # Imported here so that `ingestd serve` does not pay for httpx and friends.
    from ._client import Client

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


# -- upload ----------------------------------------------------------------


def upload(args: argparse.Namespace) -> int:
    from ._chunking import ChunkingError
    from ._client import IngestdError, UploadError, collect

    try:
        items = collect(args.paths, args.include or (), args.exclude or ())
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    metadata = _metadata(args)
    if not items:
        _say("no files to upload (the directories are empty, or --include/--exclude left none)")
        return OK
    codes: list[int] = []
    with _client(args, parallel=args.parallel, chunking=args.chunking) as client:
        if args.dry_run:
            return _dry_run(client, items, args, metadata)
        display = None
        if not (args.json or args.quiet) and sys.stderr.isatty():
            display = UploadDisplay(items)
        try:
            for path, name in items:
                try:
                    progress = display.track(path, name) if display else None
                    result = client.upload(
                        path,
                        metadata=metadata,
                        progress=progress,
                        filename=name,
                        new=args.new,
                        check=False,
                    )
                except ChunkingError as exc:
                    raise UsageError(f"{path}: {exc}") from None
                except (IngestdError, OSError) as exc:
                    code = exit_code(exc)
                    codes.append(code)
                    if display:
                        display.failed()
                    _say(str(exc))
                    if args.json:
                        _print_json(
                            {
                                "path": str(path),
                                "filename": name,
                                "error": str(exc),
                                "code": getattr(exc, "code", None),
                                "resumable": isinstance(exc, UploadError) and exc.resumable,
                                "exit": code,
                            }
                        )
                    if code in (AUTH, UNREACHABLE):
                        break  # every other file would fail the same way
                    continue
                codes.append(REJECTED if result.state == "rejected" else OK)
                if display:
                    display.done(result)
                elif not (args.json or args.quiet):
                    print(_summary_line(result), file=sys.stderr, flush=True)
                if args.json:
                    _print_json(result.as_dict())
                elif not (display and sys.stdout.isatty()):
                    # On a terminal the summary line has the id already.
                    _print_id(result.file_id)
        except KeyboardInterrupt:
            if display:  # clear the bar first, so the message is the last line
                display.close()
                display = None
            _say("interrupted; run the same command again to resume the upload")
            return INTERRUPTED
        finally:
            if display:
                display.close()
    return worst(codes)


def _summary_line(result) -> str:
    """One line per file, said once: where it went, what the plugins decided,
    what was sent."""
    if result.already_uploaded:
        sent = "already uploaded, nothing sent"
    else:
        sent = (
            f"sent {human_size(result.bytes_sent)} of {human_size(result.bytes_total)}, "
            f"{human_size(result.bytes_on_server)} already on the server, "
            f"in {result.seconds:.1f} s" + (", resumed" if result.resumed else "")
        )
    return f"{result.filename} → {result.file_id}  {result.summary}  ({sent})"


def _dry_run(client, items, args: argparse.Namespace, metadata) -> int:
    from ._chunking import ChunkingError
    from ._client import IngestdError

    total = on_server = to_send = 0
    codes = []
    for path, name in items:
        try:
            planned = client.plan(path, filename=name, new=args.new, metadata=metadata)
        except ChunkingError as exc:
            raise UsageError(f"{path}: {exc}") from None
        except (IngestdError, OSError) as exc:
            _say(str(exc))
            codes.append(exit_code(exc))
            if codes[-1] in (AUTH, UNREACHABLE):
                break
            continue
        total += planned.size
        on_server += planned.bytes_on_server
        to_send += planned.bytes_to_send
        if args.json:
            _print_json({"dry_run": True, **planned.as_dict()})
        elif not args.quiet:
            upper = "up to " if planned.action == "new" else ""
            print(
                f"{name}: {planned.action}, would send "
                f"{upper}{human_size(planned.bytes_to_send)} of {human_size(planned.size)} "
                f"({human_size(planned.bytes_on_server)} on the server)"
                + (f" → {planned.file_id}" if planned.file_id else ""),
                file=sys.stderr,
            )
    if not (args.json or args.quiet):
        print(
            f"dry run: {len(items)} file(s), {human_size(total)}: {human_size(on_server)} "
            f"already on the server, at most {human_size(to_send)} to send; nothing was sent",
            file=sys.stderr,
        )
    return worst(codes)


def _progress(*, note: bool = False, transient: bool = False):
    """A progress display on stderr in MiB and MiB/s, with a column for each
    task's `note` field if asked (rich is imported only for a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Amount(ProgressColumn):
        def render(self, task) -> Text:
            if task.total is None:
                return Text("")
            return Text(f"{task.completed / MiB:,.1f}/{task.total / MiB:,.1f} MiB")

    class Speed(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            if speed is None or task.total is None:
                return Text("")
            return Text(f"{speed / MiB:,.1f} MiB/s")

    columns = [TextColumn("{task.description}"), BarColumn(), Amount(), Speed()]
    columns.append(TimeRemainingColumn())
    if note:
        columns.append(TextColumn("{task.fields[note]}"))
    return Progress(*columns, console=Console(stderr=True), transient=transient)


class UploadDisplay:
    """Progress on stderr (a terminal): one bar per file through its phases —
    hashing, sending, processing — in MiB and MiB/s, and an overall bar when
    there are several files. Each finished file leaves one line: its id, the
    verdict and what was sent."""

    def __init__(self, items: list[tuple[Path, str]]) -> None:
        self.progress = _progress(note=True)
        self.progress.start()
        self.task = None
        self.overall = None
        self.files_done = 0
        self.size = self.counted = 0  # of the file being tracked
        self.count = len(items)
        if len(items) > 1:
            # A file that vanished since is reported when its turn comes.
            sizes = sum(_size_or_0(p) for p, _ in items)
            self.overall = self.progress.add_task(
                f"total (0/{self.count} files)", total=sizes, note=""
            )

    def track(self, path: Path, name: str):
        size = path.stat().st_size
        self.task = self.progress.add_task(f"hashing {name}", total=size, note="")
        self.size, self.counted = size, 0
        lock = threading.Lock()
        state = {"phase": "hashing", "on_server": 0}

        def update(kind: str, nbytes: int) -> None:
            # "sent" arrives from worker threads while "skipped" may still be counted.
            with lock:
                task = self.task
                if task is None:
                    return
                if kind == "hashed":
                    self.progress.advance(task, nbytes)
                    return
                if kind == "processing":
                    # No amount to count any more: a bar of its own that only pulses.
                    self.progress.remove_task(task)
                    self.task = self.progress.add_task(
                        f"processing {name}", total=None, note="the server's plugins are at work"
                    )
                    return
                if state["phase"] == "hashing":
                    # Restart the clock so that hashing time does not skew speed and ETA.
                    state["phase"] = "sending"
                    self.progress.reset(task, total=size, description=f"sending {name}")
                if kind == "skipped":
                    state["on_server"] += nbytes
                    self.progress.update(
                        task,
                        total=size - state["on_server"],
                        note=f"{state['on_server'] / MiB:,.1f} MiB already on the server",
                    )
                else:
                    self.progress.advance(task, nbytes)
                self._count(nbytes)

        return update

    def _count(self, nbytes: int) -> None:
        """The overall bar: bytes sent or found on the server, of all the files."""
        if self.overall is not None:
            self.counted += nbytes
            self.progress.advance(self.overall, nbytes)

    def done(self, result) -> None:
        self._drop()
        self.progress.console.print(_summary_line(result), highlight=False, soft_wrap=True)

    def failed(self) -> None:
        self._drop()

    def _drop(self) -> None:
        # The bar makes way for a one-line summary (or the error message).
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        if self.overall is not None:
            self.files_done += 1
            self.progress.update(
                self.overall,
                advance=self.size - self.counted,
                description=f"total ({self.files_done}/{self.count} files)",
            )
        self.progress.refresh()

    def close(self) -> None:
        self.progress.stop()


def _size_or_0(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# -- status, ls, rm ----------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    from ._client import IngestdError

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
                print(f"  {plugin}.{stage}: {json.dumps(answer, ensure_ascii=False)}")
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
    import msgspec

    from ._client import IngestdError
    from ._models import verdict_in_words

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
    from ._client import IngestdError

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


# -- download --------------------------------------------------------------


def download(args: argparse.Namespace) -> int:
    from ._client import IngestdError

    with _client(args) as client:
        try:
            with _download_display(args) as progress:
                path = client.download(
                    args.file_id, args.output, force=args.force, progress=progress
                )
        except IngestdError as exc:
            _say(str(exc))
            return exit_code(exc)
        except OSError as exc:
            _say(f"{exc.filename or args.output}: {exc.strerror or exc}")
            return FAILED
        except KeyboardInterrupt:
            _say("interrupted; run the same command again to resume the download")
            return INTERRUPTED
    _print_id(str(path))
    return OK


@contextlib.contextmanager
def _download_display(args: argparse.Namespace):
    if args.quiet or not sys.stderr.isatty():
        yield None
        return
    progress = _progress(transient=True)
    task = progress.add_task(f"downloading {args.file_id}", total=None)

    def update(kind: str, nbytes: int) -> None:
        if kind == "total":
            progress.update(task, total=nbytes)
        elif kind == "kept":
            progress.update(task, completed=nbytes)
        else:
            progress.advance(task, nbytes)

    with progress:
        yield update


# -- login -----------------------------------------------------------------


def login(args: argparse.Namespace) -> int:
    from ._client import Client, IngestdError

    _quiet_httpx(args)
    try:
        url = user_config.normalise_url(args.url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    token = args.token
    if token is None and sys.stdin.isatty():
        import getpass

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


# -- the parser ------------------------------------------------------------


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
    import textwrap

    return textwrap.fill(text, width=78)


def add_commands(sub: argparse._SubParsersAction) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
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
    up.set_defaults(func=upload)

    st = sub.add_parser(
        "status",
        help="an upload's or a file's state, missing chunks, job, verdict and findings",
        formatter_class=formatter,
        epilog=EXIT_CODES,
    )
    st.add_argument("id", metavar="UPLOAD_OR_FILE_ID")
    _server_options(st)
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.set_defaults(func=status)

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
    dl.set_defaults(func=download)

    lister = sub.add_parser("ls", help="list files with their state and verdict")
    lister.add_argument("--prefix", help="only files whose name starts with this")
    lister.add_argument(
        "--state", choices=("processing", "accepted", "rejected"), help="only files in this state"
    )
    _server_options(lister)
    lister.add_argument("--json", action="store_true", help="one JSON object per file")
    lister.set_defaults(func=ls)

    remove = sub.add_parser("rm", help="delete files (their ids are printed once deleted)")
    remove.add_argument("file_ids", nargs="+", metavar="FILE_ID")
    _server_options(remove)
    remove.set_defaults(func=rm)

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
    log_in.set_defaults(func=login)

    log_out = sub.add_parser("logout", help="forget what `ingestd login` saved")
    log_out.set_defaults(func=logout)
