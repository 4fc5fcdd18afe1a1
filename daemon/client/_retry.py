"""How the client retries a request, with tenacity: after each delay of its
`backoff` on connection errors, timeouts, 429 and 5xx, and as long as an
answer's `Retry-After` says (up to MAX_RETRY_AFTER seconds, MAX_RATE_WAITS
times); never on refusals that waiting does not change."""

from __future__ import annotations

import email.utils
import threading
import time

import httpx
import tenacity

from ._exceptions import ConnectionFailed, IngestdError, _describe, _problem

# Error answers worth retrying (unless their code is a lasting refusal).
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504, 507})

# Refusals that waiting does not change: retrying would only repeat them.
_LASTING_CODES = frozenset({"quota_exceeded", "too_many_open_uploads"})
# The longest Retry-After honoured, in seconds, and how many times one request
# waits out a rate limit (429 with Retry-After) before giving up.
MAX_RETRY_AFTER = 120.0
MAX_RATE_WAITS = 20


def _lasting(r: httpx.Response) -> bool:
    if "json" not in r.headers.get("Content-Type", ""):
        return False
    try:
        return r.json().get("code") in _LASTING_CODES
    except (ValueError, AttributeError):
        return False


class _Again(Exception):
    """One attempt failed in a way that may pass: an error answer worth
    retrying (`response`) or a transport error (`error`)."""

    def __init__(
        self, response: httpx.Response | None = None, error: BaseException | None = None
    ) -> None:
        super().__init__(response.status_code if response is not None else error)
        self.response = response
        self.error = error
        # 429 with Retry-After: the server says when; these waits are counted apart.
        self.rate_limited = (
            response is not None
            and response.status_code == 429
            and "Retry-After" in response.headers
        )

    def final(self, request: str) -> IngestdError:
        """What the caller gets once the retries are spent."""
        if self.response is not None:
            return _problem(self.response)
        return ConnectionFailed(f"{request}: {_describe(self.error or Exception())}")


def _check(r: httpx.Response) -> None:
    """Raise _Again for an answer worth retrying, ProblemError for another error."""
    if r.status_code < 400:
        return
    if r.status_code in _RETRY_STATUS and not _lasting(r):
        raise _Again(response=r)
    raise _problem(r)


class _RetryPolicy:
    """Counts one request's attempts for tenacity: ordinary failures get one
    retry per `backoff` delay; rate limits (429 with Retry-After) are waited
    out up to MAX_RATE_WAITS times, as long as the server says."""

    def __init__(self, backoff: tuple[float, ...], stop: threading.Event | None) -> None:
        self.backoff = backoff
        self.event = stop
        self.failures = 0
        self.rate_waits = 0

    def retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            retry=self._retry,
            wait=self._wait,
            stop=self._stop,
            sleep=lambda seconds: _pause(seconds, self.event),
            reraise=True,
        )

    def _retry(self, state: tenacity.RetryCallState) -> bool:
        again = state.outcome.exception() if state.outcome else None
        if not isinstance(again, _Again):
            return False
        if again.rate_limited:
            self.rate_waits += 1
        else:
            self.failures += 1
        return True

    def _stop(self, state: tenacity.RetryCallState) -> bool:
        return self.failures > len(self.backoff) or self.rate_waits > MAX_RATE_WAITS

    def _wait(self, state: tenacity.RetryCallState) -> float:
        again = state.outcome.exception() if state.outcome else None
        if isinstance(again, _Again) and again.rate_limited:
            default = 1.0
        else:
            default = (
                self.backoff[min(self.failures, len(self.backoff)) - 1] if self.backoff else 0.0
            )
        if isinstance(again, _Again) and again.response is not None:
            return retry_after(again.response, default)
        return default


def retry_after(r: httpx.Response, default: float) -> float:
    """Seconds to wait before retrying: the answer's Retry-After (seconds or an
    HTTP date) when it gives one, else `default`."""
    value = r.headers.get("Retry-After")
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _pause(delay: float, stop: threading.Event | None) -> None:
    if stop is None:
        time.sleep(delay)
    elif stop.wait(delay):
        raise _Stopped()


class _Stopped(Exception):
    """Another worker failed; this one gives up its retries."""
