"""Stage 5 — counterfactuals: what training on other data would do, predicted by datamodels
(and baseline estimators) and measured by training through the run store and the cluster.

``grid`` (removal counterfactuals over target × heuristic × k, Figure 8), ``support`` (data
support and mislabel brittleness by isotonic zero crossing, Figure 7 / App. F.3–F.4),
``selection`` (datamodel-guided data selection, DsDm), ``sets`` (one counterfactual as an
object: remove, relabel or keep only, measured by :func:`measure`). Building blocks: ``removal`` (removal
orders, predicted effects), ``crossing`` (isotonic zero crossing), ``training`` (sets trained
in rounds), ``inputs`` (store/datamodels checks, targets, baseline scores), ``summary``.
"""

from .grid import counterfactuals
from .selection import select
from .sets import Counterfactual, measure
from .support import support

__all__ = ["Counterfactual", "counterfactuals", "measure", "select", "support"]
