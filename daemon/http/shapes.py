"""Value shapes shared by the APIs' request schemas."""

from __future__ import annotations

from typing import Annotated

import msgspec

HashHex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
Sha256Hex = Annotated[str, msgspec.Meta(pattern="^[0-9a-fA-F]{64}$")]
