"""Writing to a tus-style byte stream of the store as the daemon does (tests/cas/)."""

from __future__ import annotations

from ingestd.cas.streams import StreamStore

TENANT = "default"


def append(streams: StreamStore, session_id: str, data: bytes, checksum=None):
    """One request's bytes, as the daemon stores them: tail, appender, commit, attach."""
    state = streams.state(session_id, TENANT)
    offset = state.offset
    tail = streams.read_tail(session_id, TENANT, offset)
    appender = streams.appender(state.session, offset, tail, checksum)
    sealed = appender.write(data)
    last = appender.finish()
    if last is not None:
        sealed.append(last)
    pieces = [s.commit() for s in sealed]
    return streams.attach(session_id, TENANT, offset, pieces)
