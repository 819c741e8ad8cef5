"""Leases: who is training or growing a run store right now, with a heartbeat.

A lease is a small JSON file ``<store>/.dmdask/<name>.lease.json`` holding the holder's pid,
host, what it is doing, when it started and its last heartbeat. The holder rewrites it every
``dmdask.store.lease-heartbeat`` (temporary file + rename, so readers never see half of it)
and removes it when done. A lease is *live* while its heartbeat is younger than
``dmdask.store.lease-timeout`` and, when it was taken on this host, its process still runs:
a killed holder therefore stops holding the store at once on its own host, and after the
timeout anywhere else. ``.dmdask`` is an (empty) Zarr group, so Zarr and xarray pass over it.

On one host the check-then-take is serialised with ``flock``; across hosts sharing a file
system the lease is advisory (two coordinators racing within one write of each other can both
believe they hold it).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from .. import config
from ..errors import StoreError

LEASE_DIR = ".dmdask"
_GROUP_META = {"zarr_format": 3, "node_type": "group", "attributes": {}}


class StoreBusy(StoreError):
    """Another live process holds the lease this operation needs."""


def _seconds(key: str, default: str) -> float:
    from dask.utils import parse_timedelta

    return float(parse_timedelta(config.get(key, default), default="s"))


def _atomic_json(path: str, obj: dict[str, Any]) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _lease_dir(store: str) -> str:
    d = os.path.join(store, LEASE_DIR)
    meta = os.path.join(d, "zarr.json")
    if not os.path.exists(meta):
        os.makedirs(d, exist_ok=True)
        _atomic_json(meta, _GROUP_META)
    return d


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def read_lease(store: str, name: str) -> dict[str, Any] | None:
    """The lease ``name`` of ``store`` if it is live, else ``None``."""
    try:
        with open(os.path.join(store, LEASE_DIR, f"{name}.lease.json")) as f:
            cur = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return cur if _live(cur) else None


def _live(cur: dict[str, Any]) -> bool:
    try:
        age = time.time() - float(cur["heartbeat"])
        if age > _seconds("store.lease-timeout", "60s"):
            return False
        if cur["host"] == socket.gethostname():
            return _pid_alive(int(cur["pid"]))
        return True
    except (KeyError, TypeError, ValueError):
        return False


def describe(cur: dict[str, Any]) -> str:
    """``"training (pid 12, host h, since …, heartbeat 3 s ago)"`` for messages."""
    age = time.time() - float(cur["heartbeat"])
    return (f"{cur.get('what', 'a lease')} (pid {cur['pid']} on {cur['host']}, since "
            f"{cur.get('started_at', '?')}, heartbeat {age:.0f} s ago)")


@contextlib.contextmanager
def _host_lock(d: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the lease alone
        yield
        return
    with open(os.path.join(d, "lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def hold(store: str, name: str, what: str, *, refuse: str) -> Iterator[dict[str, Any]]:
    """Hold lease ``name`` of ``store`` for the ``with`` body, refreshing its heartbeat.

    If another live process holds it, raise :class:`StoreBusy`: ``"<store>: <refuse>: <holder>"``.
    A lease left by a dead process is taken over.
    """
    d = _lease_dir(store)
    path = os.path.join(d, f"{name}.lease.json")
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
            "token": uuid.uuid4().hex, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with _host_lock(d):
        cur = read_lease(store, name)
        if cur is not None and cur.get("token") != mine["token"]:
            timeout = _seconds("store.lease-timeout", "60s")
            raise StoreBusy(f"{store}: {refuse}: {describe(cur)}; it expires {timeout:.0f} s "
                            f"after its last heartbeat if that process is gone")
        _atomic_json(path, {**mine, "heartbeat": time.time()})
    stop = threading.Event()
    period = _seconds("store.lease-heartbeat", "5s")

    def beat() -> None:
        while not stop.wait(period):
            try:
                with open(path) as f:
                    if json.load(f).get("token") != mine["token"]:
                        return  # taken over (we were presumed dead): never write over it
                _atomic_json(path, {**mine, "heartbeat": time.time()})
            except (OSError, ValueError):
                return

    t = threading.Thread(target=beat, name=f"dmdask-lease-{name}", daemon=True)
    t.start()
    try:
        yield mine
    finally:
        stop.set()
        t.join()
        with contextlib.suppress(OSError, ValueError), _host_lock(d):
            with open(path) as f:
                ours = json.load(f).get("token") == mine["token"]
            if ours:
                os.remove(path)
