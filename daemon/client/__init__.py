"""The Python client of ingestd (and the CLI's upload, download and file commands).

It talks to a daemon over HTTP only and imports nothing of the server, so a
teammate's install needs none of it::

    from ingestd.daemon.client import Client
    with Client("http://127.0.0.1:8000", token=...) as client:
        result = client.upload("train.jsonl")
"""

from ._client import *  # noqa: F403 - the public names are _client's __all__
from ._client import __all__  # noqa: F401
