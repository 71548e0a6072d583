"""The package version (one home: the package, its files' metadata and pyproject read it)."""

__version__ = "0.1.0"
