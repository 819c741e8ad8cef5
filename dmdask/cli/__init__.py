"""The ``dmdask`` command line (click): one subcommand per stage, plus ``quickstart``."""

from . import cluster as _cluster  # noqa: F401  (registers its commands)
from . import counterfactual as _counterfactual  # noqa: F401  (registers its commands)
from . import embed as _embed  # noqa: F401  (registers its commands)
from . import formats as _formats  # noqa: F401  (registers its commands)
from . import leakage as _leakage  # noqa: F401  (registers its commands)
from . import similarity as _similarity  # noqa: F401  (registers its commands)
from .commands import main

__all__ = ["main"]
