"""The `ingestd` command: run the daemon, manage its data directory, and upload,
list, inspect and download files as its client."""

from __future__ import annotations

import argparse
import logging
import os
import sys

# Only what every command needs: each command imports its own modules when it runs.
from .client import _commands as client_commands
from .serve import datadir_cli


def _serve(args: argparse.Namespace) -> int:
    from .core.config import ConfigError, load_config

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
        from .core import logs

        logs.setup(args.log_format or config.logging.format, verbose=args.verbose)
        from .http.app import load_plugins

        plugins = load_plugins(config)
    except ConfigError as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        return 2
    from .serve.server import run

    if args.listen_fd is not None:  # a worker of a master, which holds the directory
        run(config, plugins, listen_fd=args.listen_fd, worker=f"w{args.worker_slot}")
        return 0
    from .serve import instance

    try:
        held = instance.claim(config.data_dir)
        sock = instance.bind(config)
    except (instance.DataDirBusy, instance.PortBusy) as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        return 1
    with held, sock:
        from .serve import startup

        names = plugins.names()
        # Said once the socket is bound: a client may connect from now on.
        print("\n".join(startup.banner(config, names, args.config)), file=sys.stderr, flush=True)
        for warning in startup.warnings(config, names):
            logging.getLogger("ingestd").warning("%s", warning)
        if config.server.workers > 1:
            from .serve.master import Master

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
        ("--log-format", args.log_format),
    ]:
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ingestd")
    except PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    """`--version`, looked up only when asked (importlib.metadata is slow to import)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"{parser.prog} {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingestd",
        description=__doc__,
        epilog=client_commands.EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    parser.add_argument(
        "--version", action=_VersionAction, nargs=0, help="show program's version number and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    datadir_cli.add_commands(sub)
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
    serve.add_argument(
        "--log-format",
        choices=("json", "console"),
        help="logs on stderr as JSON lines or for people (default: [logging] format; "
        "auto: console on a terminal, else JSON)",
    )
    serve.set_defaults(func=_serve)

    client_commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (client_commands.UsageError, datadir_cli.CommandError) as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        return client_commands.USAGE
    except KeyboardInterrupt:
        print("ingestd: interrupted", file=sys.stderr)
        return client_commands.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
