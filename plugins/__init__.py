"""ingestd's plugin system: hook specifications, the plugin manager, processing.

Plugin authors need only this module::

    from ingestd.plugins import hookimpl, Verdict

    @hookimpl
    def ingestd_validate(ctx):
        ...
"""

from .hookspecs import hookimpl, hookspec
from .manager import (
    BUILTINS,
    DISABLE_AUTOLOAD_ENV,
    ENTRY_POINT_GROUP,
    PluginConfigError,
    Plugins,
    PluginSettings,
    build_plugins,
)
from .processing import REUSABLE_STAGES, PolicyUnavailable, Processing, run_policy
from .types import (
    DeliveryFailed,
    Detection,
    FileFacts,
    HookContext,
    OutboxMessage,
    Outcome,
    Refusal,
    UploadRequest,
    Verdict,
)

__all__ = [
    "BUILTINS",
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "DeliveryFailed",
    "Detection",
    "FileFacts",
    "HookContext",
    "Outcome",
    "OutboxMessage",
    "PluginConfigError",
    "PolicyUnavailable",
    "PluginSettings",
    "Plugins",
    "Processing",
    "REUSABLE_STAGES",
    "Refusal",
    "UploadRequest",
    "Verdict",
    "build_plugins",
    "hookimpl",
    "hookspec",
    "run_policy",
]
