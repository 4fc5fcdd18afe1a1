"""fsck: check a data directory's objects and index against each other, and repair them.

`check` reads one snapshot of the index and walks the objects:

- every object's BLAKE3 against its name;
- every file's manifest and every upload's parts: each chunk recorded, present
  and of the recorded size, the sizes adding up to the file's;
- derived data against what it derives from: chunk reference counts, tenants'
  holdings and usage, the content indexes, uploads' received counts,
  materialised copies;
- leftovers that garbage collection or a restart clears (objects no record
  names, temp files): reported, but not problems.

It only reads, so it runs beside a live daemon (`live=True`: what changed
since the snapshot is re-checked before it is reported). `repair` needs the
data directory to itself (the daemon stopped): it quarantines corrupt
objects, restores missing ones from a materialised copy that still holds
their bytes, marks files whose content is gone `damaged` (their downloads
then answer an error, never wrong bytes), drops an open upload's missing
parts so that its client sends them again, and rebuilds the derived data.
"""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import lmdb
import msgspec

from . import records
from .chunkstore import ChunkStore
from .files import LIVE_STATES, content_key, manifest_key
from .index import Index
from .localstore import clear_temp
from .records import ChunkRecord, FileRecord, FileState, Session, SessionState
from .store import Store
from .tenants import TenantLedger

# What garbage collection or a restart clears by itself.
LEFTOVER_KINDS = frozenset({"orphan_object", "temp_file"})
# Uploads whose parts are still theirs (a completion hands them to the file).
HOLDING_PARTS = frozenset({SessionState.OPEN, SessionState.COMPLETING})


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    # The object digest, file id, upload id or tenant it is about.
    subject: str
    detail: str


@dataclass
class Report:
    objects: int = 0
    object_bytes: int = 0
    verified_bytes: int = 0
    files: int = 0
    sessions: int = 0
    chunks: int = 0
    problems: list[Finding] = field(default_factory=list)
    leftovers: list[Finding] = field(default_factory=list)
    # Files marked damaged by an earlier repair (known, not new problems).
    damaged_files: list[str] = field(default_factory=list)
    quarantined: int = 0
    # What `repair` did, in words.
    repairs: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def add(self, kind: str, subject: str, detail: str) -> None:
        finding = Finding(kind, subject, detail)
        (self.leftovers if kind in LEFTOVER_KINDS else self.problems).append(finding)

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.problems + self.leftovers if f.kind == kind]

    def to_dict(self) -> dict[str, object]:
        as_dicts = msgspec.to_builtins
        return {
            "clean": self.clean,
            "objects": self.objects,
            "object_bytes": self.object_bytes,
            "verified_bytes": self.verified_bytes,
            "files": self.files,
            "sessions": self.sessions,
            "chunks": self.chunks,
            "problems": [as_dicts(_finding_dict(f)) for f in self.problems],
            "leftovers": [as_dicts(_finding_dict(f)) for f in self.leftovers],
            "damaged_files": self.damaged_files,
            "quarantined": self.quarantined,
            "repairs": self.repairs,
        }


def _finding_dict(f: Finding) -> dict[str, str]:
    return {"kind": f.kind, "subject": f.subject, "detail": f.detail}


@dataclass
class _Snapshot:
    """What the index holds, read in one transaction."""

    chunks: dict[str, ChunkRecord]
    files: dict[str, FileRecord]
    manifests: dict[str, list[tuple[str, int]]]
    sessions: dict[str, Session]
    # Upload id -> [(index, digest, length)], in index order.
    parts: dict[str, list[tuple[int, str, int]]]
    content_keys: set[bytes]
    manifest_keys: set[bytes]
    copies_due: set[str]
    ledger_stored: tuple[dict, dict]
    ledger_computed: tuple[dict, dict]

    def uses(self) -> collections.Counter[str]:
        """Manifest entries (parts and files) per chunk: its reference count."""
        counts: collections.Counter[str] = collections.Counter()
        for entries in self.parts.values():
            counts.update(digest for _, digest, _ in entries)
        for entries in self.manifests.values():
            counts.update(digest for digest, _ in entries)
        return counts


def _read(index: Index, txn: lmdb.Transaction) -> _Snapshot:
    def scan(name: str):
        return index.scan(txn, name) if name in index.db else iter(())

    parts: dict[str, list[tuple[int, str, int]]] = collections.defaultdict(list)
    for key, raw in scan("parts"):
        session_id, position = key.rsplit(b"/", 1)
        digest, length = records.unpack_entry(raw)
        parts[session_id.decode()].append((int.from_bytes(position, "big"), digest, length))
    ledger = TenantLedger(index)
    return _Snapshot(
        chunks={k.hex(): records.decode(ChunkRecord, v) for k, v in scan("chunks")},
        files={k.decode(): records.decode(FileRecord, v) for k, v in scan("files")},
        manifests={k.decode(): records.unpack_manifest(v) for k, v in scan("manifests")},
        sessions={k.decode(): records.decode(Session, v) for k, v in scan("sessions")},
        parts=dict(parts),
        content_keys={k for k, _ in scan("file_hashes")},
        manifest_keys={k for k, _ in scan("manifest_files")},
        copies_due={k.decode() for k, _ in scan("copies_due")},
        ledger_stored=ledger.stored(txn),
        ledger_computed=ledger.compute(txn),
    )


def check(
    index: Index,
    chunks: ChunkStore,
    *,
    root: Path | None = None,
    verify: bool = True,
    live: bool = False,
) -> Report:
    """Check the store; `verify`: re-hash every object (reads all the bytes);
    `root`: the data directory, for its temp files; `live`: a daemon may be
    writing meanwhile (a change since the snapshot is not a finding)."""
    report = Report()
    with index.reader() as txn:
        snap = _read(index, txn)
    report.files, report.sessions, report.chunks = (
        len(snap.files),
        len(snap.sessions),
        len(snap.chunks),
    )
    present = _check_objects(snap, chunks, report, verify=verify, live=live)
    _check_references(snap, present, report)
    _check_files(snap, report)
    _check_sessions(snap, report)
    _check_ledger(snap, report)
    if live:
        _drop_changed(index, chunks, report)
    if root is not None:
        _check_leftovers(root, report)
    report.damaged_files = sorted(f.id for f in snap.files.values() if f.state == FileState.DAMAGED)
    return report


def _check_objects(
    snap: _Snapshot, chunks: ChunkStore, report: Report, *, verify: bool, live: bool
) -> set[str]:
    """The objects that are there and whole."""
    present: set[str] = set()
    for digest in chunks.iter_hashes():
        size = chunks.size(digest)
        if size is None:
            continue  # deleted since it was listed
        report.objects += 1
        report.object_bytes += size
        if verify:
            if not chunks.verify(digest):
                if chunks.exists(digest):
                    report.add("corrupt_object", digest, "its bytes do not hash to its name")
                continue
            report.verified_bytes += size
        record = snap.chunks.get(digest)
        if record is None:
            report.add("orphan_object", digest, f"{size} bytes that no chunk record names")
        elif record.size != size:
            report.add(
                "size_mismatch", digest, f"the object is {size} bytes, its record {record.size}"
            )
            continue
        present.add(digest)
    return present


def _check_references(snap: _Snapshot, present: set[str], report: Report) -> None:
    uses = snap.uses()
    sizes: dict[str, int] = {}
    for entries in snap.manifests.values():
        sizes.update(entries)
    for entries in snap.parts.values():
        sizes.update((d, n) for _, d, n in entries)
    for digest, count in uses.items():
        record = snap.chunks.get(digest)
        if record is None:
            report.add("missing_record", digest, f"used {count} times but has no chunk record")
        elif record.refs != count:
            report.add(
                "refcount", digest, f"its record counts {record.refs} uses, manifests hold {count}"
            )
        elif sizes[digest] != record.size:
            report.add(
                "size_mismatch",
                digest,
                f"manifests say {sizes[digest]} bytes, its record {record.size}",
            )
        if digest not in present and not (record is not None and record.missing):
            report.add("missing_object", digest, f"used {count} times but missing or corrupt")
    for digest, record in snap.chunks.items():
        if digest in uses:
            continue
        if record.refs != 0 or record.released is None:
            report.add("refcount", digest, f"its record counts {record.refs} uses, nothing uses it")


def _check_files(snap: _Snapshot, report: Report) -> None:
    for file in snap.files.values():
        manifest = snap.manifests.get(file.id)
        whole = file.state in LIVE_STATES
        if file.state == FileState.REJECTED:
            if manifest is not None:
                report.add("stale_manifest", file.id, "a rejected file still holds its chunks")
        elif manifest is None:
            if whole:
                report.add("manifest_missing", file.id, "the file has no manifest")
        elif sum(n for _, n in manifest) != file.size or len(manifest) != file.chunk_count:
            report.add(
                "manifest_mismatch",
                file.id,
                f"{len(manifest)} chunks of {sum(n for _, n in manifest)} bytes, but the file "
                f"has {file.chunk_count} chunks of {file.size} bytes",
            )
        indexed = content_key(file.blake3, file.id) in snap.content_keys
        if manifest is not None:
            indexed_manifest = manifest_key(records.pack_manifest(manifest), file.id)
            indexed = indexed and indexed_manifest in snap.manifest_keys
        if whole and not indexed:
            report.add("content_index", file.id, "the file is missing from the content indexes")
        if file.path is not None:
            try:
                size = os.stat(file.path).st_size
            except OSError:
                size = None
            if size != file.size:
                report.add("copy_missing", file.id, f"its copy {file.path} is missing or cut short")
        if file.id in snap.copies_due and not whole:
            report.add("stale_copy_due", file.id, f"a copy is due for a {file.state} file")
    live_keys = {content_key(f.blake3, f.id) for f in snap.files.values() if f.state in LIVE_STATES}
    for key in snap.content_keys - live_keys:
        report.add("content_index", key[32:].decode(), "indexed by content but not a live file")


def _check_sessions(snap: _Snapshot, report: Report) -> None:
    for session_id, entries in snap.parts.items():
        session = snap.sessions.get(session_id)
        if session is None or session.state not in HOLDING_PARTS:
            state = "unknown" if session is None else session.state
            report.add("dangling_parts", session_id, f"{len(entries)} parts of a {state} upload")
    for session in snap.sessions.values():
        if session.state not in HOLDING_PARTS:
            continue
        entries = snap.parts.get(session.id, [])
        counted = (session.received_chunks, session.received_bytes)
        actual = (len(entries), sum(n for _, _, n in entries))
        if counted != actual:
            report.add(
                "received_counts",
                session.id,
                f"counts {counted[0]} chunks of {counted[1]} bytes, holds {actual[0]} "
                f"of {actual[1]}",
            )


def _check_ledger(snap: _Snapshot, report: Report) -> None:
    stored_holdings, stored_usage = snap.ledger_stored
    holdings, usage = snap.ledger_computed
    empty = records.TenantUsage()
    stored_usage = {t: u for t, u in stored_usage.items() if u != empty}
    usage = {t: u for t, u in usage.items() if u != empty}
    if stored_holdings != holdings:
        differ = len(set(stored_holdings.items()) ^ set(holdings.items()))
        report.add("tenant_ledger", "holdings", f"{differ} tenant holdings differ from manifests")
    for tenant in sorted(set(stored_usage) | set(usage)):
        if stored_usage.get(tenant, empty) != usage.get(tenant, empty):
            report.add(
                "tenant_ledger",
                tenant,
                f"usage recorded {_usage(stored_usage.get(tenant, empty))}, "
                f"manifests give {_usage(usage.get(tenant, empty))}",
            )


def _usage(u: records.TenantUsage) -> str:
    return ", ".join(f"{k} {v}" for k, v in msgspec.structs.asdict(u).items())


def _drop_changed(index: Index, chunks: ChunkStore, report: Report) -> None:
    """A live daemon may have released and collected a chunk, or attached an
    orphan, since the snapshot: keep only findings that still hold."""

    def still(f: Finding) -> bool:
        if f.kind not in ("missing_object", "orphan_object", "corrupt_object"):
            return True
        with index.reader() as txn:
            raw = txn.get(bytes.fromhex(f.subject), db=index.db["chunks"])
        record = None if raw is None else records.decode(ChunkRecord, raw)
        if f.kind == "missing_object":
            return record is not None and record.refs > 0 and not chunks.exists(f.subject)
        if f.kind == "orphan_object":
            return record is None and chunks.exists(f.subject)
        return chunks.exists(f.subject)

    report.problems = [f for f in report.problems if still(f)]
    report.leftovers = [f for f in report.leftovers if still(f)]


def _check_leftovers(root: Path, report: Report) -> None:
    tmp = root / "tmp"
    if tmp.is_dir():
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                report.add("temp_file", str(path), "a half-written object")
    quarantine = root / "quarantine"
    if quarantine.is_dir():
        report.quarantined = sum(1 for p in quarantine.iterdir() if p.is_file())


# -- repair -------------------------------------------------------------------


def repair(store: Store, report: Report) -> list[str]:
    """Fix what `report` (a `check` of this store) found. The caller holds the
    data directory alone. Returns what was done, in words."""
    done: list[str] = []
    for finding in report.of_kind("corrupt_object"):
        store.chunks.quarantine(finding.subject)
        done.append(f"quarantined corrupt object {finding.subject}")
    with store.index.reader() as txn:
        snap = _read(store.index, txn)
    missing = {d for d in snap.uses() if not store.chunks.exists(d)}
    missing -= _restore_from_copies(store, snap, missing, done)
    store.index.write(lambda txn: _repair_index(store, txn, missing, done))
    if report.of_kind("temp_file"):
        clear_temp(store.root)
        done.append(f"removed {len(report.of_kind('temp_file'))} temp files")
    return done


def _restore_from_copies(
    store: Store, snap: _Snapshot, missing: set[str], done: list[str]
) -> set[str]:
    """Objects put back from a file's materialised copy whose bytes still hash right."""
    restored: set[str] = set()
    for file in snap.files.values():
        if file.path is None or not (missing - restored):
            continue
        offset = 0
        for digest, length in snap.manifests.get(file.id, []):
            if digest in missing and digest not in restored:
                data = _read_range(file.path, offset, length)
                if data is not None and blake3.blake3(data).hexdigest() == digest:
                    store.chunks.sync([store.chunks.put(data, digest)])
                    restored.add(digest)
                    done.append(f"restored object {digest} from the copy of file {file.id}")
            offset += length
    return restored


def _read_range(path: str, offset: int, length: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except OSError:
        return None
    return data if len(data) == length else None


def _repair_index(store: Store, txn: lmdb.Transaction, missing: set[str], done: list[str]) -> None:
    now = store.clock()
    db = store.index.db
    snap = _read(store.index, txn)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(now))
    for file in snap.files.values():
        manifest = snap.manifests.get(file.id)
        if file.state == FileState.REJECTED:
            if manifest is not None:
                txn.delete(file.id.encode(), db=db["manifests"])
                done.append(f"released the chunks of rejected file {file.id}")
            continue
        if file.state not in LIVE_STATES:
            continue
        reason = _damage(file, manifest, missing)
        if reason is not None:
            _mark_damaged(store, txn, file, f"{reason} (found by fsck, {when})")
            done.append(f"marked file {file.id} damaged: {reason}")
        elif file.path is not None and _size_of(file.path) != file.size:
            store.index.put(
                txn, "files", file.id.encode(), msgspec.structs.replace(file, path=None)
            )
            if file.state == FileState.ACCEPTED:
                txn.put(file.id.encode(), b"", db=db["copies_due"])
            done.append(f"file {file.id}: its missing copy will be written again")
    for file_id in snap.copies_due:
        file = snap.files.get(file_id)
        if file is None or file.state not in LIVE_STATES:
            txn.delete(file_id.encode(), db=db["copies_due"])
    _repair_parts(store, txn, snap, missing, done)
    _rebuild_content_indexes(store, txn)
    _rebuild_refs(store, txn, missing, now, done)
    store.tenants.rebuild(txn)


def _damage(
    file: FileRecord, manifest: list[tuple[str, int]] | None, missing: set[str]
) -> str | None:
    """Why the file's bytes cannot be served, or None."""
    if manifest is None:
        return "its manifest is missing"
    if sum(n for _, n in manifest) != file.size:
        return "its manifest does not add up to its size"
    offset = 0
    lost = []
    for digest, length in manifest:
        if digest in missing:
            lost.append(offset)
        offset += length
    if lost:
        return (
            f"{len(lost)} of its {len(manifest)} chunks are missing or corrupt "
            f"(from byte {lost[0]})"
        )
    return None


def _mark_damaged(store: Store, txn: lmdb.Transaction, file: FileRecord, reason: str) -> None:
    store.index.put(
        txn,
        "files",
        file.id.encode(),
        msgspec.structs.replace(file, state=FileState.DAMAGED, reason=reason),
    )
    txn.delete(file.id.encode(), db=store.index.db["copies_due"])
    session = store.sessions.find(txn, file.session_id)
    if session is not None and session.state == SessionState.PROCESSING:
        # Its plugins cannot read it; the upload ends rejected, with the reason.
        store.sessions.transition(txn, session, SessionState.REJECTED, reason=reason)


def _size_of(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _repair_parts(
    store: Store, txn: lmdb.Transaction, snap: _Snapshot, missing: set[str], done: list[str]
) -> None:
    """Parts of ended or unknown uploads go; an open upload loses its missing
    parts (a stream: everything from the first one, its offset moves back),
    so that its client sends them again; its counts follow what it holds."""
    db = store.index.db["parts"]
    for session_id, entries in snap.parts.items():
        session = snap.sessions.get(session_id)
        if session is None or session.state not in HOLDING_PARTS:
            drop = entries
        elif session.stream:
            lost = [i for i, d, _ in entries if d in missing]
            drop = [e for e in entries if lost and e[0] >= lost[0]]
        else:
            drop = [e for e in entries if e[1] in missing]
        for position, _, _ in drop:
            txn.delete(session_id.encode() + b"/" + position.to_bytes(4, "big"), db=db)
        if drop:
            done.append(f"upload {session_id}: dropped {len(drop)} parts to be sent again")
    for session in snap.sessions.values():
        if session.state not in HOLDING_PARTS:
            continue
        kept = [n for _, n in store.parts.entries(txn, session.id)]
        counts = {"received_chunks": len(kept), "received_bytes": sum(kept)}
        if (session.received_chunks, session.received_bytes) != tuple(counts.values()):
            store.sessions.update(txn, session, **counts)
            done.append(f"upload {session.id}: received counts set to what it holds")


def _rebuild_content_indexes(store: Store, txn: lmdb.Transaction) -> None:
    db = store.index.db
    txn.drop(db["file_hashes"], delete=False)
    txn.drop(db["manifest_files"], delete=False)
    for _, raw in store.index.scan(txn, "files"):
        file = records.decode(FileRecord, raw)
        packed = txn.get(file.id.encode(), db=db["manifests"])
        if file.state in LIVE_STATES and packed is not None:
            txn.put(content_key(file.blake3, file.id), b"", db=db["file_hashes"])
            txn.put(manifest_key(packed, file.id), b"", db=db["manifest_files"])


def _rebuild_refs(
    store: Store, txn: lmdb.Transaction, missing: set[str], now: float, done: list[str]
) -> None:
    """Every chunk record's count from the manifests; a missing chunk still
    used keeps its record, flagged, so that it is never attached without its bytes."""
    snap = _read(store.index, txn)
    uses = snap.uses()
    sizes: dict[str, int] = {}
    for entries in snap.manifests.values():
        sizes.update(entries)
    for entries in snap.parts.values():
        sizes.update((d, n) for _, d, n in entries)
    fixed = 0
    for digest in set(snap.chunks) | set(uses):
        record = snap.chunks.get(digest)
        count = uses.get(digest, 0)
        if record is None:
            record = ChunkRecord(size=sizes[digest], refs=0, created=now)
        want = msgspec.structs.replace(
            record,
            refs=count,
            released=None if count else (record.released or now),
            missing=count > 0 and digest in missing,
        )
        if count == 0 and digest in missing:
            txn.delete(bytes.fromhex(digest), db=store.index.db["chunks"])
            fixed += 1
        elif want != snap.chunks.get(digest):
            store.index.put(txn, "chunks", bytes.fromhex(digest), want)
            fixed += 1
    if fixed:
        done.append(f"rebuilt {fixed} chunk records from the manifests")
