"""dmdask: datamodels at any scale.

Training runs land in a Zarr run store (models × examples) read as xarray; Dask arrays with
NumPy or CuPy chunks run the solver and the analyses out of core.
"""

from . import config  # noqa: E402,F401  (registers the dmdask dask.config defaults)

# Eager on purpose: importing the submodules ``dmdask.train``/``dmdask.evaluate`` would
# otherwise rebind the package attributes from the functions to the modules.
from .analysis.evaluate import evaluate  # noqa: E402
from .errors import DmdaskError, InputError, JobError, StoreError, WriteRefused  # noqa: E402
from .store.jobspec import Job  # noqa: E402
from .store.runstore import (  # noqa: E402
    KINDS,
    add_models,
    create_jobless_store,
    create_store,
    open_store,
    store_info,
    write_block,
)
from .train import TrainReport, train  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = [
    "KINDS",
    "DmdaskError",
    "InputError",
    "Job",
    "JobError",
    "StoreError",
    "TrainReport",
    "WriteRefused",
    "__version__",
    "add_models",
    "create_jobless_store",
    "create_store",
    "evaluate",
    "open_store",
    "store_info",
    "train",
    "write_block",
]


def __getattr__(name):
    # heavier entry points import lazily (distributed, torch users)
    if name in ("import_madrylab", "export_madrylab"):
        from .store import madrylab

        return getattr(madrylab, name)
    if name in ("counterfactuals", "support", "select", "measure", "Counterfactual"):
        from . import counterfactual

        return getattr(counterfactual, name)
    if name in ("fit_datamodels", "save_datamodels"):
        from .fit import datamodels as fit

        return getattr(fit, name)
    raise AttributeError(f"module 'dmdask' has no attribute {name!r}")
