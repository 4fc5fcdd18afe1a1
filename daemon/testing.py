"""The ``pytest11`` entry point of ingestd: the ``ingestd_daemon`` fixture.

It lives in `ingestd.daemon.serve.testing`; this module keeps the documented
import path (and plugin name) stable.
"""

from .serve import testing as _testing
from .serve.testing import InProcessDaemon  # noqa: F401

if _testing.pytest is not None:
    ingestd_daemon = _testing.ingestd_daemon
