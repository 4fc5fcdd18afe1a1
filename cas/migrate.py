"""Moving an installation to other backends: `ingestd migrate --to CONFIG`.

Three steps, each safe to run again, so an interrupted move is resumed by
running it again:

1. `copy_chunks`: every chunk the source index records is read from the
   source store, its BLAKE3 checked, and written to the target store unless
   the target has it already; the target makes each batch durable (one pack
   object per batch on S3) before the next one starts.
2. `copy_records`: every record of every database of the source index is
   written to the target index, as it is (the same keys and encodings on
   both engines), in batches; a re-run writes the same records again.
3. `verify_files`: every live file of the target is read back through the
   target's backends and its BLAKE3 compared with the one recorded.

The target index is marked while a move is under way (`meta`
`migration_source`, `migration_incomplete`), a move into an index that holds
uploads of its own is refused, and `open_index` refuses an index whose move
is unfinished, so no daemon or command uses a half-copied index.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import blake3

from . import records
from .chunkstore import ChunkStore, Lane, PutResult
from .errors import StorageError
from .index import DATABASES
from .reader import ManifestReader
from .records import FileRecord, FileState

BATCH_BYTES = 64 << 20
BATCH_RECORDS = 2000
READ_BLOCK = 1 << 20
SOURCE_KEY = b"migration_source"
INCOMPLETE_KEY = b"migration_incomplete"

Progress = Callable[[str], None]


@dataclass
class MigrationReport:
    chunks_copied: int = 0
    chunks_present: int = 0  # already in the target (an earlier, interrupted run)
    bytes_copied: int = 0
    # Recorded in the source index, absent or damaged in its store: not copied.
    chunks_unreadable: list[str] = field(default_factory=list)
    records_copied: int = 0
    files_verified: int = 0
    bytes_verified: int = 0
    # (file id, what was wrong)
    files_failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        # A chunk not copied may be one an open upload needs: not finished either.
        return not self.files_failed and not self.chunks_unreadable


class MigrationRefused(StorageError):
    code = "migration_refused"


def begin(target_index: Any, source_name: str) -> None:
    """Mark the target index as the destination of a move from `source_name`;
    refuse an index that holds uploads of its own or another move's."""

    def op(txn: Any) -> None:
        meta = target_index.db["meta"]
        source = txn.get(SOURCE_KEY, db=meta)
        if source is not None and source.decode() != source_name:
            raise MigrationRefused(
                f"the target index is the destination of a move from {source.decode()!r}"
            )
        if source is not None and txn.get(INCOMPLETE_KEY, db=meta) is None:
            # Its daemon may serve it now: copying the old records again would
            # undo what happened since (files deleted, references dropped).
            raise MigrationRefused(
                f"the move from {source_name!r} into this index finished already"
            )
        if source is None:
            for name in ("sessions", "files"):
                if next(iter(target_index.scan(txn, name, values=False)), None) is not None:
                    raise MigrationRefused(
                        f"the target index already holds {name}: a move goes into an empty one"
                    )
        txn.put(SOURCE_KEY, source_name.encode(), db=meta)
        txn.put(INCOMPLETE_KEY, b"1", db=meta)

    target_index.write(op)


def finish(target_index: Any) -> None:
    target_index.write(lambda txn: txn.delete(INCOMPLETE_KEY, db=target_index.db["meta"]))


def incomplete(index: Any) -> str | None:
    """The source of an unfinished move into this index, or None."""
    if "meta" not in index.db:
        return None  # an older, read-only LMDB index: no move ever went into it
    with index.reader() as txn:
        meta = index.db["meta"]
        if txn.get(INCOMPLETE_KEY, db=meta) is None:
            return None
        source = txn.get(SOURCE_KEY, db=meta)
    return source.decode() if source is not None else "?"


def copy_chunks(
    source_index: Any,
    source: ChunkStore,
    target: ChunkStore,
    report: MigrationReport,
    progress: Progress | None = None,
) -> None:
    with source_index.reader() as txn:
        wanted = [(key.hex(), raw) for key, raw in source_index.scan(txn, "chunks")]
    lane = Lane()  # one batch's chunks together (one pack, one object)
    batch: list[PutResult] = []
    batch_bytes = 0
    for n, (digest, raw) in enumerate(wanted, 1):
        if records.decode(records.ChunkRecord, raw).missing:
            report.chunks_unreadable.append(digest)  # fsck found it gone already
            continue
        if target.exists(digest):
            report.chunks_present += 1
            continue
        try:
            data = source.read(digest)
        except StorageError:
            report.chunks_unreadable.append(digest)
            continue
        if blake3.blake3(data).hexdigest() != digest:
            report.chunks_unreadable.append(digest)  # fsck finds it; never copied as is
            continue
        writer = target.writer(digest, lane)
        try:
            writer.write(data)
            batch.append(writer.commit())
        except BaseException:
            writer.abort()
            raise
        report.chunks_copied += 1
        report.bytes_copied += len(data)
        batch_bytes += len(data)
        if batch_bytes >= BATCH_BYTES:
            target.sync(batch)
            batch, batch_bytes = [], 0
            if progress is not None:
                progress(f"chunks: {n} of {len(wanted)} ({report.bytes_copied} bytes copied)")
    target.sync(batch)


def copy_records(
    source_index: Any, target_index: Any, report: MigrationReport, progress: Progress | None = None
) -> None:
    for name in DATABASES:
        if name not in source_index.db:
            continue  # an older index without it
        rows: list[tuple[bytes, bytes]] = []
        with source_index.reader() as txn:
            for key, value in source_index.scan(txn, name):
                if name == "meta" and key in (SOURCE_KEY, INCOMPLETE_KEY):
                    continue
                rows.append((key, bytes(value)))
                if len(rows) >= BATCH_RECORDS:
                    _write_rows(target_index, name, rows, report)
        _write_rows(target_index, name, rows, report)
        if progress is not None:
            progress(f"records: {name} copied ({report.records_copied} so far)")


def _write_rows(
    index: Any, name: str, rows: list[tuple[bytes, bytes]], report: MigrationReport
) -> None:
    db = index.db[name]

    def op(txn: Any) -> None:
        for key, value in rows:
            txn.put(key, value, db=db)

    index.write(op)
    report.records_copied += len(rows)
    rows.clear()


def verify_files(
    target_index: Any, target: ChunkStore, report: MigrationReport, progress: Progress | None = None
) -> None:
    with target_index.reader() as txn:
        files = [records.decode(FileRecord, raw) for _, raw in target_index.scan(txn, "files")]
        manifests = {}
        for file in files:
            packed = txn.get(file.id.encode(), db=target_index.db["manifests"])
            if packed is not None:
                manifests[file.id] = records.unpack_manifest(packed)
    for file in files:
        if file.state in (FileState.REJECTED, FileState.DAMAGED):
            continue  # no content to check
        entries = manifests.get(file.id)
        if entries is None:
            report.files_failed.append((file.id, "no manifest"))
            continue
        hasher = blake3.blake3()
        reader = ManifestReader(target, entries)
        try:
            while block := reader.read(READ_BLOCK):
                hasher.update(block)
        except (StorageError, OSError) as exc:
            report.files_failed.append((file.id, f"unreadable: {exc}"))
            continue
        finally:
            reader.close()
        if hasher.hexdigest() != file.blake3:
            report.files_failed.append((file.id, "BLAKE3 differs"))
            continue
        report.files_verified += 1
        report.bytes_verified += file.size
        if progress is not None and report.files_verified % 100 == 0:
            progress(f"verified {report.files_verified} of {len(files)} files")


def migrate(
    source_index: Any,
    source_chunks: ChunkStore,
    target_index: Any,
    target_chunks: ChunkStore,
    *,
    source_name: str,
    progress: Progress | None = None,
) -> MigrationReport:
    """Copy, then verify; the target is marked finished only when every file verifies."""
    report = MigrationReport()
    begin(target_index, source_name)
    copy_chunks(source_index, source_chunks, target_chunks, report, progress)
    copy_records(source_index, target_index, report, progress)
    verify_files(target_index, target_chunks, report, progress)
    if report.ok:
        finish(target_index)
    return report


def source_name(data_dir: str | os.PathLike[str]) -> str:
    return os.path.realpath(data_dir)
