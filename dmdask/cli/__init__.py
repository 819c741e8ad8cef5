"""The ``dmdask`` command line (click): one subcommand per stage, plus ``quickstart``."""

from .commands import main

__all__ = ["main"]
