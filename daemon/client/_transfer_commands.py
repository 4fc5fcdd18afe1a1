"""The commands that move files: `ingestd upload` (with its dry run and its
progress display) and `ingestd download`."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from pathlib import Path

from ._chunking import ChunkingError
from ._collect import collect
from ._command_support import (
    AUTH,
    FAILED,
    INTERRUPTED,
    OK,
    REJECTED,
    UNREACHABLE,
    UsageError,
    _client,
    _metadata,
    _print_id,
    _print_json,
    _say,
    exit_code,
    worst,
)
from ._exceptions import IngestdError, UploadError
from ._output import human_size, printable

MiB = 1 << 20


# -- upload ----------------------------------------------------------------


def upload(args: argparse.Namespace) -> int:
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
                    codes.append(_upload_failed(exc, path, name, args, display))
                    if codes[-1] in (AUTH, UNREACHABLE):
                        break  # every other file would fail the same way
                    continue
                codes.append(REJECTED if result.state == "rejected" else OK)
                _uploaded(result, args, display)
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


def _upload_failed(
    exc: BaseException,
    path: Path,
    name: str,
    args: argparse.Namespace,
    display: UploadDisplay | None,
) -> int:
    """Say why one file's upload failed (a JSON line too with --json); its exit status."""
    code = exit_code(exc)
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
    return code


def _uploaded(result, args: argparse.Namespace, display: UploadDisplay | None) -> None:
    """Say what became of one uploaded file: its summary line, and its id (or
    its JSON object) on stdout."""
    if display:
        display.done(result)
    elif not (args.json or args.quiet):
        print(_summary_line(result), file=sys.stderr, flush=True)
    if args.json:
        _print_json(result.as_dict())
    elif not (display and sys.stdout.isatty()):
        # On a terminal the summary line has the id already.
        _print_id(result.file_id)


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
    return f"{printable(result.filename)} → {result.file_id}  {result.summary}  ({sent})"


def _dry_run(client, items, args: argparse.Namespace, metadata) -> int:
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
    # Deferred on purpose: rich is heavy, and only a terminal needs it.
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


# -- download --------------------------------------------------------------


def download(args: argparse.Namespace) -> int:
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
