"""Stage 3 — from the run store to datamodels.

``stats`` is the one pass over row blocks that forms the sufficient statistics; ``solve`` holds
the LASSO-path solvers that work from them (or, for targets with their own rows, stream the
blocks); ``datamodels`` ties both into :func:`fit_datamodels`. The statistics pass never imports
a solver: solvers depend on statistics, not the other way round.
"""

from .datamodels import choose_selection, fit_datamodels, save_datamodels, select_models

__all__ = ["choose_selection", "fit_datamodels", "save_datamodels", "select_models"]
