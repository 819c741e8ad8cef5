"""The package version, in a module of its own so that any stage can record it without
importing the package root (which imports the stages)."""

__version__ = "0.1.0"
