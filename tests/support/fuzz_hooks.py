"""Schemathesis hooks for the fuzz run (loaded with SCHEMATHESIS_HOOKS).

tus bodies are `application/offset+octet-stream`: sent as raw bytes, like
`application/octet-stream`.
"""

import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
