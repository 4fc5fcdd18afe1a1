"""Helpers shared by the tests of every folder (no tests here).

Imported as `support.*`: pyproject.toml's `pythonpath = ["tests"]` puts
tests/ on sys.path, for pytest and for bench/ (which inserts it itself).
"""
