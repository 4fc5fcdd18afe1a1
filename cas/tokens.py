"""API tokens: records that bind a secret's hash to a tenant and scopes.

The "tokens" database maps a token id to a `TokenRecord`. The secret itself
is never stored: callers hand in its SHA-256, and compare in constant time
(`ingestd.daemon.auth`). Revoking deletes the record, so any process reading
the index refuses the token from its next request on.
"""

from __future__ import annotations

from collections.abc import Callable

import lmdb
import msgspec

from . import records
from .index import Index
from .records import TokenRecord


class UnknownToken(LookupError):
    pass


class Tokens:
    def __init__(self, index: Index, clock: Callable[[], float]) -> None:
        self._index = index
        self._clock = clock

    def get(self, token_id: str) -> TokenRecord | None:
        with self._index.reader() as txn:
            return self._index.get(txn, "tokens", token_id.encode(), TokenRecord)

    def all(self) -> list[TokenRecord]:
        with self._index.reader() as txn:
            found = [records.decode(TokenRecord, raw) for _, raw in self._index.scan(txn, "tokens")]
        return sorted(found, key=lambda t: t.created)

    def add(self, token: TokenRecord) -> None:
        def op(txn: lmdb.Transaction) -> None:
            for _, raw in self._index.scan(txn, "tokens"):
                if records.decode(TokenRecord, raw).name == token.name:
                    raise ValueError(f"a token named {token.name!r} exists; revoke it first")
            self._index.put(txn, "tokens", token.id.encode(), token)

        self._index.write(op)

    def revoke(self, name_or_id: str) -> TokenRecord:
        """Delete the token with this id or name."""

        def op(txn: lmdb.Transaction) -> TokenRecord:
            for key, raw in self._index.scan(txn, "tokens"):
                token = records.decode(TokenRecord, raw)
                if name_or_id in (token.id, token.name):
                    txn.delete(key, db=self._index.db["tokens"])
                    return token
            raise UnknownToken(f"no token with id or name {name_or_id!r}")

        return self._index.write(op)

    def touch(self, token_id: str) -> None:
        """Record that the token was just used (a revoked one stays gone)."""

        def op(txn: lmdb.Transaction) -> None:
            token = self._index.get(txn, "tokens", token_id.encode(), TokenRecord)
            if token is not None:
                self._index.put(
                    txn,
                    "tokens",
                    token_id.encode(),
                    msgspec.structs.replace(token, last_used=self._clock()),
                )

        self._index.write(op)
