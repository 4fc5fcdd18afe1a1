"""The `ingestd` command."""

from __future__ import annotations

import argparse
import logging
import sys

from .config import ConfigError, load_config


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(
            args.config,
            overrides={
                ("server", "host"): args.host,
                ("server", "port"): args.port,
                ("storage", "data_dir"): args.data_dir,
            },
        )
    except ConfigError as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        return 2
    from .server import run

    run(config)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingestd", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--config", metavar="PATH", help="config file (TOML)")
    serve.add_argument("--host", help="address to bind (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to bind (overrides server.port)")
    serve.add_argument("--data-dir", metavar="DIR", help="overrides storage.data_dir")
    serve.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
