"""Built-in plugin "clamav": scan every file with a running clamd.

The content is streamed to clamd with the INSTREAM command over its unix
socket or a loopback TCP address (``[plugins.clamav] socket`` or
``address``); nothing is written to disk for clamd to read. Without either
setting the plugin only reports itself disabled. When clamd is configured but
cannot be reached, or answers with an error, the hook raises: the pipeline
records the error and, with ``[plugins] on_error = "reject"``, rejects the
file (fail closed).

clamd scans at most ``StreamMaxLength`` bytes of a stream, and never more
than 2 GiB of one file. A file over either limit is not scanned; ``on_limit``
says whether that rejects it (the default) or only adds a note. Set
``AlertExceedsMax yes`` in clamd.conf: without it, clamd answers "OK" for a
file larger than its ``MaxFileSize`` or ``MaxScanSize`` without having
scanned all of it.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO, Literal

import msgspec
from ingestd.plugins import HookContext, Verdict, hookimpl

PLUGIN_NAME = "clamav"
DISABLED_NOTE = "clamd not configured: set [plugins.clamav] socket"

# Bytes per INSTREAM chunk; clamd accepts any chunk up to StreamMaxLength.
CHUNK_SIZE = 256 * 1024
# libclamav clamps MaxFileSize to this (it logs "scanning files greater than
# 2 GiB - 1 is not supported"); larger streams would be answered without
# being scanned, so they are not sent at all.
CLAMD_MAX_FILE_SIZE = 2_147_483_645
_LENGTH = struct.Struct(">I")
_MAX_REPLY = 4096
# clamd's reply when a stream goes over StreamMaxLength.
_STREAM_LIMIT_REPLY = "INSTREAM size limit exceeded"
# Signatures clamd reports (with AlertExceedsMax) for content it did not scan in full.
_LIMIT_SIGNATURE_PREFIX = "Heuristics.Limits.Exceeded"


class ClamAVConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``[plugins.clamav]``."""

    # Path of clamd's LocalSocket.
    socket: str = ""
    # Or clamd's TCPSocket as "host:port"; loopback only, because clamd's
    # protocol is neither authenticated nor encrypted.
    address: str = ""
    # Seconds to wait for clamd on each connect, send or receive.
    timeout: float = 60.0
    # A file too large for clamd to scan: "reject" it, or "accept" it with a note.
    on_limit: Literal["reject", "accept"] = "reject"

    def __post_init__(self) -> None:
        if self.socket and self.address:
            raise ValueError("set either socket or address, not both")
        if self.address:
            parse_address(self.address)
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")


class ClamdError(Exception):
    """clamd could not be reached or did not answer a scan."""


@dataclass(frozen=True)
class ScanResult:
    """clamd's answer to one INSTREAM: clean, a signature, or over a limit."""

    signature: str | None = None
    limit: str | None = None


@hookimpl
def ingestd_config_schema(plugin_name: str) -> type | None:
    return ClamAVConfig if plugin_name == PLUGIN_NAME else None


@hookimpl
def ingestd_scan(ctx: HookContext) -> Verdict:
    config = ctx.config
    if isinstance(config, Mapping):  # registered under another name: no schema applied
        config = msgspec.convert(config, ClamAVConfig, strict=False)
    if not (config.socket or config.address):
        return Verdict.accept(disabled=DISABLED_NOTE)
    if ctx.facts.size > CLAMD_MAX_FILE_SIZE:
        result = ScanResult(limit="larger than the 2 GiB clamd can scan")
    else:
        with ctx.open() as stream:
            result = scan_stream(config, stream)
    if result.signature is not None:
        return Verdict.reject(f"virus found: {result.signature}", signature=result.signature)
    if result.limit is not None:
        note = f"not scanned for viruses: {result.limit}"
        if config.on_limit == "reject":
            return Verdict.reject(note, limit_exceeded=True)
        return Verdict.accept(scanned=False, limit_exceeded=True, note=note)
    return Verdict.accept(scanned=True, clean=True)


def scan_stream(config: ClamAVConfig, stream: BinaryIO) -> ScanResult:
    """Send `stream` to clamd with INSTREAM and interpret the answer."""
    where = config.socket or config.address
    try:
        sock = connect(config)
    except OSError as exc:
        raise ClamdError(f"clamd unreachable at {where}: {exc.strerror or exc}") from None
    with sock:
        # Errors reading the content are not caught: they are not clamd's.
        try:
            reply = instream(sock, stream)
        except TimeoutError:
            raise ClamdError(
                f"clamd at {where} did not answer within {config.timeout:g} s"
            ) from None
    return parse_reply(reply)


def connect(config: ClamAVConfig) -> socket.socket:
    if config.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(config.timeout)
        try:
            sock.connect(config.socket)
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection(parse_address(config.address), timeout=config.timeout)


def instream(sock: socket.socket, stream: BinaryIO) -> str:
    """The INSTREAM exchange: length-prefixed chunks, a zero-length end, one reply."""
    # clamd only answers before the end to refuse (over StreamMaxLength), then
    # closes: polling for that stops sending the rest of a large file. (A
    # recv with MSG_DONTWAIT would not do: Python waits for readiness first
    # on a socket with a timeout.)
    early_reply = select.poll()
    early_reply.register(sock, select.POLLIN)
    sock.sendall(b"zINSTREAM\0")
    try:
        while chunk := stream.read(CHUNK_SIZE):
            sock.sendall(_LENGTH.pack(len(chunk)) + chunk)
            if early_reply.poll(0):
                break
        else:
            sock.sendall(_LENGTH.pack(0))
    except (BrokenPipeError, ConnectionResetError):
        pass  # clamd stopped reading; its reply, if any, says why
    return _read_reply(sock)


def _read_reply(sock: socket.socket) -> str:
    reply = bytearray()
    try:
        while b"\0" not in reply and len(reply) < _MAX_REPLY:
            data = sock.recv(_MAX_REPLY)
            if not data:
                break
            reply += data
    except ConnectionResetError:
        pass  # on a refused stream clamd may reset right after its reply
    return reply.split(b"\0", 1)[0].decode("utf-8", "replace").strip()


def parse_reply(reply: str) -> ScanResult:
    """Interpret "stream: OK", "stream: <signature> FOUND" or "... ERROR"."""
    if reply.startswith(_STREAM_LIMIT_REPLY):
        return ScanResult(limit="larger than clamd's StreamMaxLength")
    body = reply.removeprefix("stream:").strip()
    if body == "OK":
        return ScanResult()
    if body.endswith(" FOUND"):
        signature = body.removesuffix(" FOUND").strip()
        if signature.startswith(_LIMIT_SIGNATURE_PREFIX):
            return ScanResult(limit=f"over a clamd scan limit ({signature})")
        return ScanResult(signature=signature)
    if not reply:
        raise ClamdError("clamd closed the connection without answering")
    raise ClamdError(f"clamd could not scan the file: {reply}")


def parse_address(address: str) -> tuple[str, int]:
    """ "host:port" or "[v6]:port" of a loopback clamd; ValueError otherwise."""
    host, sep, port_text = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"address must be host:port, got {address!r}")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"address must be a loopback host:port (clamd's protocol is neither"
                f" authenticated nor encrypted), got {address!r}"
            )
    return host, int(port_text)
