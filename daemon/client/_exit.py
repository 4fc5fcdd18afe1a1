"""The CLI's exit statuses and its usage error: what `ingestd` needs before it
knows which command runs (importing nothing else, for a quick start)."""

from __future__ import annotations

OK, FAILED, USAGE, REJECTED, AUTH, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 4, 5, 130
EXIT_CODES = """\
exit status:
  0    done
  1    failed (the server refused a request, a download did not verify, ...)
  2    usage: bad arguments, a missing local file
  3    rejected: the file arrived and a plugin rejected it (the reason is printed)
  4    authentication: no token, a token not valid, or not allowed to do this
  5    the server could not be reached
  130  interrupted (Ctrl-C); run the same upload again to resume it
With several files, the most serious: 130, 4, 5, 1, then 3."""
_SEVERITY = [INTERRUPTED, AUTH, UNREACHABLE, FAILED, REJECTED, OK]


class UsageError(Exception):
    """Bad arguments or configuration: exit status 2."""
