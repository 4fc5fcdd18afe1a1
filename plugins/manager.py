"""Building the plugin manager of one daemon: built-ins, entry points, config."""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import pluggy

from . import hookspecs
from .types import FileFacts

ENTRY_POINT_GROUP = "ingestd"
# Like pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD: only built-ins and plugins
# registered in code are used.
DISABLE_AUTOLOAD_ENV = "INGESTD_DISABLE_PLUGIN_AUTOLOAD"

# Built-in plugins, by name; each is an ordinary plugin module.
BUILTINS: dict[str, str] = {
    "detect": "ingestd.plugins.builtin.detect",
    "datasets": "ingestd.plugins.builtin.datasets",
    "models": "ingestd.plugins.builtin.models",
    "clamav": "ingestd.plugins.builtin.clamav",
    "pii": "ingestd.plugins.builtin.pii",
    "metadata": "ingestd.plugins.builtin.metadata",
    "webhooks": "ingestd.plugins.builtin.webhooks",
}


class PluginConfigError(Exception):
    """A plugin's config table is invalid; the message names the key."""


@dataclass(frozen=True)
class PluginSettings:
    """The ``[plugins]`` section of the daemon's config."""

    # When non-empty, only these plugins are used.
    enabled: Sequence[str] = ()
    disabled: Sequence[str] = ()
    # Seconds a plugin may spend on one hook call.
    timeout: float = 300.0
    # A plugin error rejects the file ("reject", fail closed) or is only recorded.
    on_error: Literal["reject", "accept"] = "reject"
    autoload: bool = True
    # Where the deciding stages run: a child process per job ("process": CPU-
    # heavy plugins cannot starve the daemon) or the daemon's worker threads.
    isolation: Literal["process", "thread"] = "process"
    # Content the same plugins (same code, same settings) already accepted
    # under the same name and declared metadata is not examined again: the
    # earlier answers of the deciding stages are reused, and say so.
    reuse_verdicts: bool = True
    # ``[plugins.<name>]`` tables, raw.
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class Plugins:
    """A daemon's plugin manager and each plugin's parsed config."""

    def __init__(
        self, pm: pluggy.PluginManager, settings: PluginSettings, *, in_code: bool = False
    ) -> None:
        self.pm = pm
        self.settings = settings
        # Plugins registered in code (tests) exist only in this process.
        self.in_code = in_code
        self.configs: dict[str, Any] = {}
        for name in self.names():
            self.configs[name] = self._parse_config(name)

    @property
    def isolated(self) -> bool:
        """Whether jobs run their deciding stages in a child process."""
        return self.settings.isolation == "process" and not self.in_code

    def names(self) -> list[str]:
        return _names(self.pm)

    @functools.cached_property
    def fingerprint(self) -> str:
        """What the plugins' decisions depend on besides the file: each plugin's
        name, code (the hash of its source file) and parsed config, in call
        order, and the settings that change verdicts. Any change, a new
        version of a plugin included, gives another fingerprint."""
        plugins = []
        for name, plugin in self.pm.list_name_plugin():
            if name is None:
                continue
            plugins.append(
                {
                    "name": name,
                    "code": _source_hash(plugin),
                    "config": msgspec.to_builtins(self.configs.get(name)),
                }
            )
        basis = {
            "plugins": plugins,
            "on_error": self.settings.on_error,
            "timeout": self.settings.timeout,
            "processing": _source_hash(importlib.import_module(__package__ + ".processing")),
        }
        return hashlib.sha256(msgspec.json.encode(basis, order="sorted")).hexdigest()

    def decision_key(self, facts: FileFacts) -> str:
        """Names one decision: these plugins on this content, under this name and
        declared metadata, for this tenant (everything a deciding stage sees,
        but the ids and times that differ for every upload)."""
        basis = {
            "fingerprint": self.fingerprint,
            "tenant": facts.tenant,
            "filename": facts.filename,
            "size": facts.size,
            "blake3": facts.blake3,
            "declared_metadata": facts.declared_metadata,
        }
        return hashlib.sha256(msgspec.json.encode(basis, order="sorted")).hexdigest()

    def hookimpls(self, hook: str) -> list[pluggy.HookImpl]:
        """Implementations of `hook` in call order (last registered first)."""
        return list(reversed(getattr(self.pm.hook, hook).get_hookimpls()))

    def _parse_config(self, name: str) -> Any:
        table = dict(self.settings.tables.get(name, {}))
        schema = self.pm.hook.ingestd_config_schema(plugin_name=name)
        if schema is None:
            return table
        try:
            # strict=False: values from the environment arrive as strings.
            return msgspec.convert(table, schema, strict=False)
        except msgspec.ValidationError as exc:
            raise PluginConfigError(f"invalid config [plugins.{name}]: {exc}") from None


def _source_hash(plugin: object) -> str:
    """The sha256 of the file that defines `plugin` (a module or an object)."""
    try:
        path = inspect.getfile(plugin if inspect.ismodule(plugin) else type(plugin))
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except (OSError, TypeError):
        # Defined where no source file is (built in, or made at run time):
        # only its name can tell.
        return f"unknown:{getattr(plugin, '__name__', type(plugin).__qualname__)}"


def _names(pm: pluggy.PluginManager) -> list[str]:
    return [name for name, _ in pm.list_name_plugin() if name is not None]


def build_plugins(
    settings: PluginSettings | None = None,
    *,
    extra: Mapping[str, object] | None = None,
    builtins: Mapping[str, str] | None = None,
) -> Plugins:
    """A fresh plugin manager for one daemon (there is no global one).

    Registers the built-ins, then ``extra`` plugins given in code (tests),
    then, unless autoloading is off, the ``ingestd`` entry points. Disabled
    plugins are unregistered; unknown hooks fail at once (``check_pending``).
    """
    settings = settings or PluginSettings()
    builtins = BUILTINS if builtins is None else builtins

    def wanted(name: str) -> bool:
        if name in settings.disabled:
            return False
        return not settings.enabled or name in settings.enabled

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    # A built-in that is not wanted is not even imported.
    for name, module in builtins.items():
        if wanted(name):
            pm.register(importlib.import_module(module), name=name)
    for name, plugin in (extra or {}).items():
        if wanted(name):
            pm.register(plugin, name=name)
    known = set(builtins) | set(extra or {})
    if settings.autoload and not os.environ.get(DISABLE_AUTOLOAD_ENV):
        before = set(_names(pm))
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        for name in set(_names(pm)) - before:
            known.add(name)
            if not wanted(name):
                pm.unregister(name=name)
    for name in [*settings.enabled, *settings.disabled, *settings.tables]:
        if name not in known:
            where = f"[plugins.{name}]" if name in settings.tables else "plugins"
            raise PluginConfigError(
                f"invalid config {where}: no plugin named {name!r} "
                f"(known: {', '.join(sorted(known))})"
            )
    pm.check_pending()
    return Plugins(pm, settings, in_code=bool(extra))
