"""A prelude for child processes that must die at an exact point of a store write.

``KILL_AT_WRITE`` patches zarr's ``LocalStore.set`` so the ``KILL_AT``-th key written (counted
from 1) SIGKILLs the process before that write starts; ``calls[0]`` counts the writes so far.
A test appends the code to run and passes the result to ``python -c``.
"""

KILL_AT_WRITE = """
import os, signal, sys
import zarr.storage
calls = [0]
orig = zarr.storage.LocalStore.set
async def counting_set(self, key, value):
    calls[0] += 1
    if calls[0] == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    return await orig(self, key, value)
zarr.storage.LocalStore.set = counting_set
"""
