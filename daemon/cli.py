"""The `ingestd` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from . import datadir_commands
from .config import ConfigError, load_config
from .datadir_commands import human_size as _size


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(
            args.config,
            overrides={
                ("server", "host"): args.host,
                ("server", "port"): args.port,
                ("storage", "data_dir"): args.data_dir,
                ("server", "workers"): args.workers,
            },
        )
        from .app import load_plugins

        plugins = load_plugins(config)
    except ConfigError as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        return 2
    from .server import run

    if args.listen_fd is not None:  # a worker of a master, which holds the directory
        run(config, plugins, listen_fd=args.listen_fd, worker=f"w{args.worker_slot}")
        return 0
    from . import instance

    try:
        held = instance.claim(config.data_dir)
        sock = instance.bind(config)
    except (instance.DataDirBusy, instance.PortBusy) as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        return 1
    with held, sock:
        from . import startup

        names = plugins.names()
        # Said once the socket is bound: a client may connect from now on.
        print("\n".join(startup.banner(config, names, args.config)), file=sys.stderr, flush=True)
        for warning in startup.warnings(config, names):
            logging.getLogger("ingestd").warning("%s", warning)
        if config.server.workers > 1:
            from .master import Master

            return Master(config, _worker_argv(args)).run(sock)
        # hypercorn closes the socket it serves: give it a descriptor of its own.
        run(config, plugins, listen_fd=os.dup(sock.fileno()))
    return 0


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """The `serve` options a worker process is started with: the master's own."""
    argv = ["--verbose"] if args.verbose else []
    for flag, value in [
        ("--config", args.config),
        ("--host", args.host),
        ("--port", args.port),
        ("--data-dir", args.data_dir),
        ("--workers", args.workers),
    ]:
        if value is not None:
            argv += [flag, str(value)]
    return argv


DEFAULT_URL = "http://127.0.0.1:8000"


class UsageError(Exception):
    """Bad arguments or configuration: exit status 2."""


def _client(args: argparse.Namespace, **options: object):
    # Imported here so that `ingestd serve` does not pay for httpx and friends.
    from .client import Client

    if not args.url.startswith(("http://", "https://")):
        raise UsageError(f"--url must be an http:// or https:// URL, got {args.url!r}")
    if not args.verbose:
        # httpx logs every request at INFO; an upload makes thousands.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return Client(args.url, token=args.token, verify=args.cacert or True, **options)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _upload(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths]
    for path in paths:
        if not path.is_file():
            raise UsageError(
                f"{path}: no such file" if not path.exists() else f"{path}: not a file"
            )
    metadata = None
    if args.metadata is not None:
        try:
            metadata = json.loads(args.metadata)
        except ValueError as exc:
            raise UsageError(f"--metadata is not JSON: {exc}") from None
        if not isinstance(metadata, dict):
            raise UsageError("--metadata must be a JSON object")

    from .chunking import ChunkingError
    from .client import IngestdError, UploadError

    failed = 0
    with _client(args, parallel=args.parallel, chunking=args.chunking) as client:
        display = None if args.json else _UploadDisplay()
        try:
            for path in paths:
                progress = display.track(path) if display else None
                try:
                    result = client.upload(path, metadata=metadata, progress=progress)
                except ChunkingError as exc:
                    raise UsageError(f"{path}: {exc}") from None
                except IngestdError as exc:
                    failed += 1
                    print(f"ingestd: {exc}", file=sys.stderr)
                    if args.json:
                        _print_json(
                            {
                                "path": str(path),
                                "error": str(exc),
                                "code": getattr(exc, "code", None),
                                "resumable": isinstance(exc, UploadError) and exc.resumable,
                            }
                        )
                    if display:
                        display.failed()
                    continue
                if args.json:
                    _print_json({"path": str(path), **result.as_dict()})
                elif display:
                    display.done(result)
        except KeyboardInterrupt:
            if display:  # clear the bar first, so the message is the last line
                display.close()
                display = None
            print(
                "ingestd: interrupted; run the same command again to resume the upload",
                file=sys.stderr,
            )
            return 130
        finally:
            if display:
                display.close()
    return 1 if failed else 0


class _UploadDisplay:
    """A rich progress bar per file on stderr: bytes, speed, ETA, deduplicated chunks."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[dedup]}"),
            console=Console(stderr=True),
        )
        self.progress.start()
        self.task = None

    def track(self, path: Path):
        size = path.stat().st_size
        task = self.progress.add_task(f"hashing {path.name}", total=size, dedup="")
        self.task = task
        lock = threading.Lock()
        state = {"sending": False, "skipped": 0, "skipped_bytes": 0}

        def update(kind: str, nbytes: int) -> None:
            # "sent" arrives from worker threads while "skipped" may still be counted.
            with lock:
                if kind == "hashed":
                    self.progress.advance(task, nbytes)
                    return
                if not state["sending"]:
                    # Restart the clock so that hashing time does not skew speed and ETA.
                    state["sending"] = True
                    self.progress.reset(task, total=size, description=path.name)
                if kind == "skipped":
                    state["skipped"] += 1
                    state["skipped_bytes"] += nbytes
                    self.progress.update(
                        task,
                        total=size - state["skipped_bytes"],
                        dedup=f"{state['skipped']} chunks already there",
                    )
                else:
                    self.progress.advance(task, nbytes)

        return update

    def done(self, result) -> None:
        self._drop()
        self.progress.console.print(
            f"{result.filename} → {result.file_id}  sent {_size(result.bytes_sent)} of "
            f"{_size(result.bytes_total)} ({result.chunks_sent} of {result.chunks_total} chunks, "
            f"{result.chunks_skipped} already there{', resumed' if result.resumed else ''}) "
            f"in {result.seconds:.1f} s"
        )

    def failed(self) -> None:
        self._drop()

    def _drop(self) -> None:
        # The bar makes way for a one-line summary (or the error message).
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        self.progress.refresh()

    def close(self) -> None:
        self.progress.stop()


def _download(args: argparse.Namespace) -> int:
    from .client import IngestdError

    with _client(args) as client:
        try:
            dest = args.output
            if dest is None:
                dest = Path.cwd()
            path = client.download(args.file_id, dest)
        except IngestdError as exc:
            print(f"ingestd: {exc}", file=sys.stderr)
            return 1
    print(path)
    return 0


def _ls(args: argparse.Namespace) -> int:
    from .client import IngestdError

    with _client(args) as client:
        try:
            files = client.files(prefix=args.prefix)
        except IngestdError as exc:
            print(f"ingestd: {exc}", file=sys.stderr)
            return 1
    if args.json:
        for f in files:
            _print_json(f)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("id", "filename", "size", "created"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for f in files:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f.get("created") or 0))
        table.add_row(f["id"], f["filename"], _size(int(f["size"])), created)
    Console().print(table)
    return 0


def _print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("INGESTD_URL") or DEFAULT_URL,
        help="the daemon's address (default: $INGESTD_URL or %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("INGESTD_TOKEN") or None,
        help="bearer token (default: $INGESTD_TOKEN)",
    )
    parser.add_argument(
        "--cacert",
        metavar="PATH",
        default=os.environ.get("INGESTD_CACERT") or None,
        help="CA certificate (PEM) to trust for an https:// URL, e.g. a self-signed "
        "daemon's (default: $INGESTD_CACERT, else the system's)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingestd", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)
    datadir_commands.add_commands(sub)
    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--config", metavar="PATH", help="config file (TOML)")
    serve.add_argument("--host", help="address to bind (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to bind (overrides server.port)")
    serve.add_argument("--data-dir", metavar="DIR", help="overrides storage.data_dir")
    serve.add_argument(
        "--workers", type=int, metavar="N", help="worker processes (overrides server.workers)"
    )
    # Given by the master to the worker processes it starts.
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-slot", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)

    upload = sub.add_parser(
        "upload",
        help="upload files (resumable: run it again after a failure)",
        description="Upload files to the daemon, sending only the chunks it does not have. "
        "An interrupted upload resumes when the same command is run again.",
    )
    upload.add_argument("paths", nargs="+", metavar="PATH", help="files to upload")
    _add_server_options(upload)
    upload.add_argument(
        "--parallel", type=_positive, default=5, help="chunks sent at once (default: 5)"
    )
    upload.add_argument(
        "--chunking",
        choices=("cdc", "fixed"),
        default="cdc",
        help="content-defined (dedups shifted data) or fixed-size chunks (default: cdc)",
    )
    upload.add_argument("--metadata", metavar="JSON", help="a JSON object stored with each file")
    upload.add_argument(
        "--json", action="store_true", help="print one JSON object per file, no progress bar"
    )
    upload.set_defaults(func=_upload)

    download = sub.add_parser("download", help="download a file, verified by its BLAKE3")
    download.add_argument("file_id", metavar="FILE_ID")
    download.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        type=Path,
        help="where to write it (a file or a directory; default: its name, here)",
    )
    _add_server_options(download)
    download.set_defaults(func=_download)

    ls = sub.add_parser("ls", help="list files")
    ls.add_argument("--prefix", help="only files whose name starts with this")
    _add_server_options(ls)
    ls.add_argument("--json", action="store_true", help="print one JSON object per file")
    ls.set_defaults(func=_ls)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (UsageError, datadir_commands.CommandError) as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
