"""Shared test configuration: optional-dependency markers skip cleanly without their extra."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

# dmdask records the job modules of the stores it creates as trusted in dask's config directory
# (dmdask.store.jobspec): give the session its own, so tests never write to ~/.config/dask and
# child processes (workers, `dmdask` subprocesses) share the session's trust.
_DASK_CONFIG = tempfile.mkdtemp(prefix="dmdask-tests-dask-config-")
os.environ["DASK_CONFIG"] = _DASK_CONFIG
atexit.register(shutil.rmtree, _DASK_CONFIG, True)

import pytest  # noqa: E402

from dmdask import optional  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
# Job classes used by the tests live in tests/testjobs.py, outside the package: child
# processes (dask workers, `dmdask` subprocesses) find them through PYTHONPATH.
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [TESTS] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)


def pytest_collection_modifyitems(config, items):
    skips = {
        "torch": (not optional.has("torch"), "torch not installed (pip install 'dmdask[torch]')"),
        "gpu": (not optional.has_gpu(), "no CUDA GPU with CuPy"),
        "viz": (not optional.has("matplotlib"), "matplotlib not installed"),
        # the report's browser test drives Debian's headless `chromium` (Ubuntu's name too)
        "browser": (not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    "no chromium/chromium-browser binary (apt-get install chromium)"),
    }
    # importing ffcv costs seconds (numba, OpenCV): only when a collected test needs it
    if any("ffcv" in item.keywords for item in items):
        skips["ffcv"] = (not optional.has("ffcv"),
                         "ffcv not installed (pip install 'dmdask[ffcv]'; needs pkg-config "
                         "libturbojpeg0-dev libopencv-dev to build)")
    for item in items:
        for mark, (skip, why) in skips.items():
            if skip and mark in item.keywords:
                item.add_marker(pytest.mark.skip(reason=why))
