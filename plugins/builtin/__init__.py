"""The built-in plugins. Each module is an ordinary plugin, written the way a
third-party one would be, and registered by name in `ingestd.plugins.BUILTINS`."""
