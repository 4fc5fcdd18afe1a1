"""The parsers of the data-dir commands (`ingestd token …`, `stats`, `gc`,
`fsck`, `migrate`, `migrate-schema`): argparse only; a command's module
(`datadir_commands`: the index, the store) is imported when it runs, so the
CLI starts quickly."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

from ..core.scopes import SCOPES


class CommandError(Exception):
    """Bad arguments or configuration: exit status 2."""


def _later(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"{__package__}.datadir_commands"), name)(args)

    return run


def _datadir_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="the daemon's config file (TOML)")
    parser.add_argument("--data-dir", metavar="DIR", help="overrides storage.data_dir")


def add_commands(sub: argparse._SubParsersAction) -> None:
    token = sub.add_parser(
        "token",
        help="create, list and revoke API tokens (on the daemon's host)",
        description="API tokens, kept (hashed) in the daemon's data directory. "
        "Works while the daemon runs; a revoked token is refused at once.",
    )
    actions = token.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a token and print it (only now)")
    create.add_argument("--tenant", required=True, help="the tenant whose data it reaches")
    create.add_argument("--name", help="a name to list and revoke it by (default: generated)")
    create.add_argument(
        "--scope",
        choices=SCOPES,
        default="write",
        help="read: list and download; write: also upload and delete; "
        "admin: every tenant (default: write)",
    )
    create.add_argument("--expires", metavar="DURATION", help="e.g. 30d, 12h (default: never)")
    _datadir_options(create)
    create.set_defaults(func=_later("token_create"))
    listing = actions.add_parser("list", help="list tokens (never their secrets)")
    listing.add_argument("--json", action="store_true", help="one JSON object per token")
    _datadir_options(listing)
    listing.set_defaults(func=_later("token_list"))
    revoke = actions.add_parser("revoke", help="revoke a token by name or id")
    revoke.add_argument("token", metavar="NAME_OR_ID")
    _datadir_options(revoke)
    revoke.set_defaults(func=_later("token_revoke"))

    st = sub.add_parser(
        "stats",
        help="what each tenant stores (on the daemon's host)",
        description="Per tenant: files, logical bytes (uploaded), physical bytes (each "
        "chunk once), open uploads and the bytes they reserve.",
    )
    st.add_argument("--tenant", help="only this tenant")
    st.add_argument("--json", action="store_true", help="one JSON object per tenant")
    _datadir_options(st)
    st.set_defaults(func=_later("stats"))

    collect = sub.add_parser(
        "gc",
        help="collect garbage now (on the daemon's host)",
        description="Expire old sessions and delete chunks nothing has used for the grace "
        "period, and objects no record names. Safe while the daemon runs.",
    )
    collect.add_argument("--dry-run", action="store_true", help="only say what would go")
    collect.add_argument("--grace", type=float, metavar="SECONDS", help="default: storage.gc_grace")
    collect.add_argument("--json", action="store_true", help="print one JSON object")
    _datadir_options(collect)
    collect.set_defaults(func=_later("gc"))

    check = sub.add_parser(
        "fsck",
        help="check the store's objects and index (on the daemon's host)",
        description="Re-hash every object against its name; check every manifest's chunks, "
        "reference counts, tenants' figures and content indexes. Read-only, and safe "
        "while the daemon runs. Exit status: 0 no problems, 1 problems found.",
    )
    check.add_argument(
        "--repair",
        action="store_true",
        help="(daemon stopped) quarantine corrupt objects, mark the files they break "
        "damaged, drop open uploads' missing parts, rebuild derived data",
    )
    check.add_argument("--quick", action="store_true", help="skip re-hashing the objects")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    _datadir_options(check)
    check.set_defaults(func=_later("fsck"))

    move = sub.add_parser(
        "migrate",
        help="copy this installation into the backends another config names",
        description="Copy every chunk and every record of this data directory (its daemon "
        "stopped) into the chunk store and index that --to names (e.g. an S3 bucket and "
        "PostgreSQL), then read every file back through them and check its BLAKE3. Safe "
        "to run again: an interrupted move resumes. Exit status: 0 when every file "
        "verified, 1 otherwise.",
    )
    move.add_argument(
        "--to", required=True, metavar="CONFIG", help="the config file of the new backends"
    )
    move.add_argument("--json", action="store_true", help="print one JSON object")
    _datadir_options(move)
    move.set_defaults(func=_later("migrate"))

    schema = sub.add_parser(
        "migrate-schema",
        help="bring the PostgreSQL index's schema to this version",
        description="Apply the index schema's migrations that the configured database "
        'lacks (index.backend = "postgres"), in order, and print its version. The daemon '
        "applies them when it starts too; this runs them ahead, e.g. before an upgrade.",
    )
    schema.add_argument(
        "--status", action="store_true", help="only print the versions, change nothing"
    )
    _datadir_options(schema)
    schema.set_defaults(func=_later("migrate_schema"))
