"""A `dask worker --preload netcount` module: counts the bytes the worker reads off its TCP
connections (every message from the scheduler, clients and other workers), for tests that
measure what a computation sends to the workers. ``client.run(netcount.received)`` reads it.

distributed's TCP comm reads each message's frames with ``read_bytes_rw`` (after an 8-byte
length header): wrapping that module function counts every payload byte received."""

import distributed.comm.tcp as _tcp

_count = [0]
_orig = _tcp.read_bytes_rw


async def _counting(stream, n):
    _count[0] += int(n)
    return await _orig(stream, n)


def received() -> int:
    """Bytes this process has read off TCP comms since the preload."""
    return _count[0]


def dask_setup(worker) -> None:
    _tcp.read_bytes_rw = _counting
