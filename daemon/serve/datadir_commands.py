"""`ingestd token …`, `ingestd stats`, `ingestd gc` and `ingestd fsck`: commands an
operator runs on the daemon's host, against its data directory (while it runs, or not).

They open the index (LMDB or PostgreSQL) directly, as another worker would. The config file
(or `--data-dir`) says where the data is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from ingestd import cas

from ..client._output import human_size, print_table
from ..core.config import ConfigError, load_config
from ..core.services import open_chunks, open_index, open_store
from ..http.auth import check_tenant_name, create_token, parse_duration
from .datadir_cli import CommandError
from .instance import DataDirBusy, claim


def _config(args: argparse.Namespace):
    try:
        return load_config(args.config, overrides={("storage", "data_dir"): args.data_dir})
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def _index(args: argparse.Namespace) -> cas.Index:
    return open_index(_config(args))


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def token_create(args: argparse.Namespace) -> int:
    try:
        check_tenant_name(args.tenant)
        expires = parse_duration(args.expires) if args.expires else None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    index = _index(args)
    try:
        token, record = create_token(
            cas.Tokens(index, time.time),
            tenant=args.tenant,
            scope=args.scope,
            name=args.name,
            expires_in=expires,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    finally:
        index.close()
    # The token alone on stdout (TOKEN=$(ingestd token create …)); the rest on stderr.
    print(token)
    print(
        f"created token {record.name!r} (id {record.id}) for tenant {record.tenant!r}, "
        f"scope {args.scope}, expires {_when(record.expires) if record.expires else 'never'}; "
        "it is shown only now",
        file=sys.stderr,
    )
    return 0


def token_list(args: argparse.Namespace) -> int:
    index = _index(args)
    try:
        tokens = cas.Tokens(index, time.time).all()
    finally:
        index.close()
    rows = [
        {
            "id": t.id,
            "name": t.name,
            "tenant": t.tenant,
            "scopes": t.scopes,
            "created": t.created,
            "last_used": t.last_used,
            "expires": t.expires,
        }
        for t in tokens
    ]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        print("no tokens (create one with: ingestd token create --tenant NAME)", file=sys.stderr)
        return 0
    header = ("id", "name", "tenant", "scopes", "created", "last used", "expires")
    table = [header] + [
        (
            r["id"],
            r["name"],
            r["tenant"],
            ",".join(r["scopes"]),
            _when(r["created"]),
            _when(r["last_used"]),
            _when(r["expires"]) if r["expires"] else "never",
        )
        for r in rows
    ]
    print_table(table)
    return 0


def token_revoke(args: argparse.Namespace) -> int:
    index = _index(args)
    try:
        record = cas.Tokens(index, time.time).revoke(args.token)
    except cas.UnknownToken as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        return 1
    finally:
        index.close()
    print(
        f"revoked token {record.name!r} (id {record.id}) of tenant {record.tenant!r}",
        file=sys.stderr,
    )
    return 0


def _store_summary(index: cas.Index, chunks: cas.ChunkStore) -> dict[str, object]:
    """Objects the chunk store holds, and sessions, files, jobs and outbox
    entries by state."""
    objects = sizes = 0
    for digest in chunks.iter_hashes():
        size = chunks.size(digest)
        if size is not None:
            objects += 1
            sizes += size
    out: dict[str, object] = {"objects": objects, "object_bytes": sizes}
    with index.reader() as txn:
        for name, kind in (
            ("sessions", cas.Session),
            ("files", cas.FileRecord),
            ("jobs", cas.Job),
            ("outbox", cas.OutboxEntry),
        ):
            counts: dict[str, int] = {}
            for _, raw in index.scan(txn, name):
                state = str(getattr(msgspec.msgpack.decode(raw, type=kind), "state", "pending"))
                counts[state] = counts.get(state, 0) + 1
            out[name] = counts
    return out


def stats(args: argparse.Namespace) -> int:
    config = _config(args)
    index = open_index(config)
    try:
        ledger = cas.TenantLedger(index)
        with index.reader() as txn:
            usage = dict(ledger.all(txn))
        summary = None
        if args.tenant is None:
            chunks = open_chunks(config, readonly=True)
            try:
                summary = _store_summary(index, chunks)
            finally:
                chunks.close()
    finally:
        index.close()
    if args.tenant is not None:
        usage = {args.tenant: usage.get(args.tenant, cas.TenantUsage())}
    rows = [{"tenant": tenant, **_usage_dict(u)} for tenant, u in sorted(usage.items())]
    if args.json:
        if summary is not None:
            print(json.dumps({"store": summary, "tenants": rows}))
        else:
            print(json.dumps(rows[0]))
        return 0
    if summary is not None:
        print(f"objects: {summary['objects']} ({human_size(int(summary['object_bytes']))} on disk)")
        for name in ("sessions", "files", "jobs", "outbox"):
            states = summary[name] or {}
            shown = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none"
            print(f"{name}: {shown}")
        print()
    header = ("tenant", "files", "logical", "physical", "chunks", "open uploads", "reserved")
    table = [header] + [
        (
            r["tenant"],
            str(r["files"]),
            human_size(r["logical_bytes"]),
            human_size(r["physical_bytes"]),
            str(r["chunks"]),
            str(r["open_uploads"]),
            human_size(r["open_bytes"]),
        )
        for r in rows
    ]
    print_table(table)
    return 0


def gc(args: argparse.Namespace) -> int:
    config = _config(args)
    grace = config.storage.gc_grace if args.grace is None else args.grace
    # Its own temp directory: a Store clears the one it is given, and a daemon
    # may be using the others.
    with open_store(config, worker="gc-command") as store:
        expired = [] if args.dry_run else store.expire_sessions()
        chunks = store.collect_garbage(grace, dry_run=args.dry_run)
        orphans = store.sweep_orphans(grace, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    result = {
        "dry_run": args.dry_run,
        "expired_sessions": len(expired),
        "unreferenced_objects": chunks[0],
        "unreferenced_bytes": chunks[1],
        "orphan_objects": orphans[0],
        "orphan_bytes": orphans[1],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{verb} {chunks[0]} unreferenced objects ({human_size(chunks[1])}) and {orphans[0]} "
            f"orphans ({human_size(orphans[1])}) older than {grace:g} s; "
            f"{len(expired)} sessions expired"
        )
    return 0


def fsck(args: argparse.Namespace) -> int:
    """Exit 0: no problems (leftovers aside); 1: problems (repaired, with --repair)."""
    config = _config(args)
    data_dir = Path(config.data_dir)
    if config.index.backend == "lmdb" and not (data_dir / "index.lmdb").is_dir():
        raise CommandError(f"{data_dir} holds no ingestd data (no index.lmdb)")
    try:
        held = claim(data_dir)
    except DataDirBusy as exc:
        if args.repair:
            raise CommandError(f"cannot repair while the daemon runs: {exc}") from None
        held = None  # a live daemon's directory: read only, re-checking what moved
    try:
        if held is None:
            index = open_index(config, readonly=True)
            chunks = open_chunks(config, readonly=True)
            try:
                report = cas.fsck.check(
                    index, chunks, root=data_dir, verify=not args.quick, live=True
                )
            finally:
                index.close()
            return _fsck_result(args, report, None, None)
        with open_store(config, worker="fsck-command") as store:
            report = cas.fsck.check(store.index, store.chunks, root=data_dir, verify=not args.quick)
            if not args.repair:
                return _fsck_result(args, report, None, None)
            done = cas.fsck.repair(store, report)
            after = cas.fsck.check(store.index, store.chunks, root=data_dir, verify=False)
            return _fsck_result(args, report, done, after)
    finally:
        if held is not None:
            held.release()


def _fsck_result(
    args: argparse.Namespace,
    report: cas.fsck.Report,
    repairs: list[str] | None,
    after: cas.fsck.Report | None,
) -> int:
    if args.json:
        out = report.to_dict()
        if repairs is not None:
            out["repairs"] = repairs
            out["after_repair"] = after.to_dict()
        print(json.dumps(out))
        return 0 if report.clean else 1
    hashed = f", {human_size(report.verified_bytes)} re-hashed" if report.verified_bytes else ""
    print(
        f"checked {report.objects} objects ({human_size(report.object_bytes)}{hashed}), "
        f"{report.chunks} chunk records, {report.files} files, {report.sessions} uploads"
    )
    for finding in report.problems:
        print(f"problem: {finding.kind}: {finding.subject}: {finding.detail}")
    leftovers: dict[str, int] = {}
    for finding in report.leftovers:
        leftovers[finding.kind] = leftovers.get(finding.kind, 0) + 1
    for kind, n in sorted(leftovers.items()):
        print(
            f"leftover: {n} {kind.replace('_', ' ')}s (ingestd gc removes them after their grace)"
        )
    if report.damaged_files:
        print(f"damaged files (known): {', '.join(report.damaged_files)}")
    if report.quarantined:
        print(f"quarantined objects: {report.quarantined} (under quarantine/)")
    for line in repairs or ():
        print(f"repaired: {line}")
    if after is not None:
        print(f"after repair: {len(after.problems)} problems")
    elif not report.clean:
        print(
            f"{len(report.problems)} problems; run `ingestd fsck --repair` with the daemon stopped"
        )
    else:
        print("no problems")
    return 0 if report.clean else 1


def _usage_dict(usage: cas.TenantUsage) -> dict[str, int]:
    return {
        "files": usage.files,
        "logical_bytes": usage.logical_bytes,
        "physical_bytes": usage.physical_bytes,
        "chunks": usage.chunks,
        "open_uploads": usage.open_uploads,
        "open_bytes": usage.open_bytes,
    }


def migrate_schema(args: argparse.Namespace) -> int:
    config = _config(args)
    if config.index.backend != "postgres":
        raise CommandError(
            'migrate-schema is for index.backend = "postgres"; the LMDB index needs none'
        )
    dsn, schema = config.index.dsn, config.index.schema
    try:
        if args.status:
            current, latest = cas.index_schema_status(dsn, schema)
            print(f"index schema {schema}: version {current} (this ingestd: {latest})")
            return 0
        applied = cas.migrate_index_schema(dsn, schema)
        current, _ = cas.index_schema_status(dsn, schema)
    except cas.StorageError as exc:
        raise CommandError(str(exc)) from None
    for version in applied:
        print(f"applied migration {version}")
    print(f"index schema {schema}: version {current}")
    return 0


def migrate(args: argparse.Namespace) -> int:
    source = _config(args)
    try:
        target = load_config(args.to)
    except ConfigError as exc:
        raise CommandError(f"--to: {exc}") from None
    if _same_index(source, target):
        raise CommandError("--to names the same index as the source: nothing to move")
    if source.index.backend == "lmdb" and not (source.data_dir / "index.lmdb").is_dir():
        raise CommandError(f"{source.data_dir} holds no ingestd data (no index.lmdb)")
    try:
        held = claim(source.data_dir)
    except DataDirBusy as exc:
        raise CommandError(f"stop the daemon before moving its data: {exc}") from None
    say = (lambda line: None) if args.json else (lambda line: print(line, file=sys.stderr))
    opened: list[Any] = []
    try:
        source_index = open_index(source, readonly=True)
        opened.append(source_index)
        source_chunks = open_chunks(source, readonly=True)
        opened.append(source_chunks)
        target_chunks = open_chunks(target, worker="migrate")
        opened.append(target_chunks)
        target_index = open_index(target, moving_into=True)
        opened.append(target_index)
        report = cas.migrate.migrate(
            source_index,
            source_chunks,
            target_index,
            target_chunks,
            source_name=cas.migrate.source_name(source.data_dir),
            progress=say,
        )
    except cas.StorageError as exc:
        raise CommandError(str(exc)) from None
    finally:
        for thing in reversed(opened):
            thing.close()
        held.release()
    if args.json:
        print(json.dumps(dataclasses.asdict(report) | {"ok": report.ok}))
    else:
        print(
            f"chunks: {report.chunks_copied} copied ({human_size(report.bytes_copied)}), "
            f"{report.chunks_present} already there; records: {report.records_copied}; "
            f"files verified: {report.files_verified} ({human_size(report.bytes_verified)})"
        )
        for digest in report.chunks_unreadable:
            print(f"not copied: chunk {digest} is missing or damaged in the source (see fsck)")
        for file_id, why in report.files_failed:
            print(f"problem: file {file_id}: {why}")
        print("moved: start the daemon with --config " + args.to if report.ok else "not finished")
    return 0 if report.ok else 1


def _same_index(a: Any, b: Any) -> bool:
    if a.index.backend != b.index.backend:
        return False
    if a.index.backend == "lmdb":
        return a.data_dir == b.data_dir
    return (a.index.dsn, a.index.schema) == (b.index.dsn, b.index.schema)
