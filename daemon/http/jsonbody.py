"""JSON request bodies, decoded strictly, for every API.

Quart decodes a body as text first (a body that is not UTF-8 then fails
outside its own error handling) and with the stdlib, which accepts lone
surrogates, nests until the interpreter's recursion limit, and takes integers
of any size. This request class decodes the bytes with msgspec instead and
refuses, with a 400 problem naming the fault: bytes that are not UTF-8 JSON,
lone surrogates, nesting deeper than MAX_DEPTH, integers outside 64 bits.
"""

from __future__ import annotations

from typing import Any

import msgspec
from quart_trio.wrappers.request import TrioRequest

from .errors import ApiError

MAX_DEPTH = 32
# Integers a record can hold (msgpack: int64 or uint64).
MIN_INT, MAX_INT = -(1 << 63), (1 << 64) - 1


def check_value(value: Any, depth: int = 0) -> None:
    """Refuse nesting deeper than MAX_DEPTH and integers outside 64 bits."""
    if depth > MAX_DEPTH:
        raise ApiError(400, "invalid_json", f"JSON nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for item in value.values():
            check_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_value(item, depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool):
        if not MIN_INT <= value <= MAX_INT:
            raise ApiError(
                400, "invalid_json", f"integer {str(value)[:30]}… does not fit in 64 bits"
            )


def decode(data: bytes) -> Any:
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", f"JSON nests deeper than {MAX_DEPTH} levels") from None
    check_value(value)
    return value


class StrictJSONRequest(TrioRequest):
    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        if cache and self._cached_json[silent] is not Ellipsis:
            return self._cached_json[silent]
        if not (force or self.is_json):
            return None
        data = await self.get_data(cache=cache, as_text=False)
        try:
            result = decode(data)
        except ApiError:
            if not silent:
                raise
            result = None
        if cache:
            self._cached_json[silent] = result
        return result
