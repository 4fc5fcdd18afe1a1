"""Built-in plugin "pii": find personal data in text-like datasets.

Looks for e-mail addresses, phone numbers, payment card numbers (Luhn),
IBANs (mod 97), US social security numbers and IPv4/IPv6 addresses in
JSONL, JSON, CSV, TSV and plain text; binary formats (models, Parquet,
compressed files) are skipped. Findings are reported as counts per kind and
a few sample positions (byte offset, line number), never the values.

``[plugins.pii] policy = "report"`` (default) accepts the file and records
the findings; ``"reject"`` rejects a file with any finding.

The content is streamed in blocks. One compiled regular expression finds
candidates; only those are checked in Python (checksums, number ranges,
``ipaddress``). To keep false positives low, formats are deliberately
narrow: SSNs only as ``123-45-6789`` or ``123 45 6789``; phone numbers only
in international (``+44 20 7946 0958``, ``0044 ...``), North American
(``(415) 555-2671``, ``415-555-2671``) or European national (``030
12345678``) notation; card numbers only with an issuer's prefix. A card or
phone number that is one of a run of numbers ("2019 4111 1111 1111 1111",
token ids, tables) is not counted. JSON escapes (``\n``) count as spaces.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, BinaryIO, Literal

import msgspec
from ingestd.plugins import Detection, HookContext, Verdict, hookimpl

from . import pii_patterns

# The validators, for those who test them through the plugin.
from .pii_patterns import iban_valid, luhn_valid  # noqa: F401

PLUGIN_NAME = "pii"

Kind = Literal["email", "phone", "credit_card", "iban", "ssn", "ipv4", "ipv6"]
KINDS: tuple[Kind, ...] = ("email", "phone", "credit_card", "iban", "ssn", "ipv4", "ipv6")
# (singular, plural) for rejection reasons.
KIND_NAMES: dict[str, tuple[str, str]] = {
    "email": ("email", "emails"),
    "phone": ("phone number", "phone numbers"),
    "credit_card": ("credit card", "credit cards"),
    "iban": ("IBAN", "IBANs"),
    "ssn": ("SSN", "SSNs"),
    "ipv4": ("IPv4 address", "IPv4 addresses"),
    "ipv6": ("IPv6 address", "IPv6 addresses"),
}

TEXT_FORMATS = frozenset({"jsonl", "json", "csv", "tsv", "text"})
# Without a detection, content with a NUL byte this early is taken as binary.
SNIFF_BYTES = 8192

BLOCK_SIZE = 4 * 1024 * 1024
# Longer than any candidate match plus the lookahead after it (the longest is
# an e-mail domain, at most ~540 bytes), so a match that starts in a block
# is seen whole before the block is left behind.
OVERLAP = 1024
# Bytes kept before the search position for lookbehinds and for the parts
# found by looking backwards (an e-mail's local part is at most 64 bytes, the
# number before a card or phone number is looked at for 24 digits).
CONTEXT = 80


class PIIConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``[plugins.pii]``."""

    # "report": accept and record findings; "reject": reject on any finding.
    policy: Literal["report", "reject"] = "report"
    kinds: list[Kind] = msgspec.field(default_factory=lambda: list(KINDS))
    # Sample positions kept per kind.
    max_samples: Annotated[int, msgspec.Meta(ge=0)] = 5
    # Scan only this many bytes from the start; 0 scans the whole file.
    max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0


@dataclass
class Findings:
    """Counts per kind and the first sample positions; never the values."""

    kinds: tuple[str, ...]
    max_samples: int
    counts: dict[str, int] = field(init=False)
    samples: dict[str, list[dict[str, int]]] = field(default_factory=dict)
    scanned_bytes: int = 0

    def __post_init__(self) -> None:
        self.counts = dict.fromkeys(self.kinds, 0)

    def wants_sample(self, kind: str) -> bool:
        return len(self.samples.get(kind, ())) < self.max_samples

    def wants_any_sample(self) -> bool:
        return any(self.wants_sample(kind) for kind in self.kinds)

    def summary(self) -> str:
        parts = []
        for kind in self.kinds:
            if count := self.counts[kind]:
                singular, plural = KIND_NAMES[kind]
                parts.append(f"{count} {singular if count == 1 else plural}")
        return ", ".join(parts)


@hookimpl
def ingestd_config_schema(plugin_name: str) -> type | None:
    return PIIConfig if plugin_name == PLUGIN_NAME else None


@hookimpl
def ingestd_scan(ctx: HookContext) -> Verdict | None:
    config = ctx.config
    if not isinstance(config, PIIConfig):  # registered under another name: no schema applied
        config = msgspec.convert(config, PIIConfig, strict=False)
    with ctx.open() as stream:
        if not is_text_like(ctx.detection, stream):
            return None
        stream.seek(0)
        findings = scan(stream, config.kinds, config.max_samples, config.max_bytes)
    details: dict[str, Any] = {
        "found": findings.counts,
        "samples": findings.samples,
        "scanned_bytes": findings.scanned_bytes,
    }
    if findings.scanned_bytes < ctx.facts.size:
        details["truncated"] = True
    if config.policy == "reject" and any(findings.counts.values()):
        return Verdict.reject(f"PII found: {findings.summary()}", **details)
    return Verdict.accept(**details)


def is_text_like(detection: Detection | None, stream: BinaryIO) -> bool:
    if detection is not None:
        return detection.format in TEXT_FORMATS or detection.mime_type.startswith("text/")
    return b"\0" not in stream.read(SNIFF_BYTES)


def scan(
    stream: BinaryIO,
    kinds: Iterable[str] = KINDS,
    max_samples: int = 5,
    max_bytes: int = 0,
    block_size: int = BLOCK_SIZE,
) -> Findings:
    """Find PII in `stream`, block by block; each match is counted once even
    when it straddles two blocks."""
    wanted = set(kinds)
    kinds = tuple(kind for kind in KINDS if kind in wanted)
    findings = Findings(kinds, max_samples)
    if not kinds:
        return findings
    matcher = pii_patterns.matcher(kinds)
    remaining = max_bytes or -1
    buf = b""
    buf_start = 0  # absolute offset of buf[0]
    pos = 0  # absolute offset where the search resumes
    line_pos, line_no = 0, 1  # line_no is the line of absolute offset line_pos
    eof = False
    while not eof:
        block = _read(stream, block_size if remaining < 0 else min(block_size, remaining))
        findings.scanned_bytes += len(block)
        if remaining >= 0:
            remaining -= len(block)
        eof = len(block) < block_size or remaining == 0
        # Drop what is already searched, except the context before `pos`.
        keep_from = max(0, pos - CONTEXT - buf_start)
        if line_pos < buf_start + keep_from and findings.wants_any_sample():
            line_no += buf.count(b"\n", line_pos - buf_start, keep_from)
            line_pos = buf_start + keep_from
        buf, buf_start = buf[keep_from:] + block, buf_start + keep_from
        # Matches must start before `limit` unless this is the end: a later
        # one may continue in the next block.
        limit = len(buf) if eof else len(buf) - OVERLAP
        search = matcher.candidates.search
        local = pos - buf_start
        while (m := search(buf, local)) is not None and (anchor := m.start()) < limit:
            found = matcher.find(buf, anchor)
            if found is None:
                local = anchor + 1
                continue
            kind, start, end = found
            findings.counts[kind] += 1
            if findings.wants_sample(kind):
                # The anchor is on the finding's line: no pattern crosses a newline.
                line_no += buf.count(b"\n", line_pos - buf_start, anchor)
                line_pos = buf_start + anchor
                sample = {"offset": buf_start + start, "line": line_no}
                findings.samples.setdefault(kind, []).append(sample)
            local = end
        # Nothing starts before `limit` that was not seen; what starts after
        # it is searched again, whole, with the next block.
        pos = buf_start + max(local, limit)
    return findings


def _read(stream: BinaryIO, size: int) -> bytes:
    """`size` bytes, fewer only at the end of the stream."""
    if size <= 0:
        return b""
    data = stream.read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size and (more := stream.read(size - got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)
