"""A thread-safe token-bucket read rate limiter: the emulated storage speed for hosts where the rig cannot throttle
the block device for real (no root, read-only cgroups), and for reading from an already-cached file.

The weight reader calls ``limiter.acquire(nbytes)`` before (or after) each read; ``acquire`` sleeps until the bucket
holds enough tokens. ``from_env()`` returns the limiter the rig asked for through ``EDGESPOOL_IO_BANDWIDTH``
(bytes/s, e.g. ``90000000`` or ``90MB/s``) and optionally ``EDGESPOOL_IO_IOPS`` (reads/s), or None when unset.
"""
from __future__ import annotations

import os
import threading
import time

from ...errors import OptionError
from ...units import parse_rate

ENV_BANDWIDTH = "EDGESPOOL_IO_BANDWIDTH"
ENV_IOPS = "EDGESPOOL_IO_IOPS"

class RateLimiter:
    """Token bucket: at most ``bytes_per_s`` on average (and ``ops_per_s`` calls, if given), with a burst of
    ``burst_s`` seconds' worth of tokens. Shared by all reader threads (a lock guards the bucket; sleeping happens
    outside it, so waiting threads queue fairly by reservation order)."""

    def __init__(self, bytes_per_s: float, ops_per_s: float | None = None, burst_s: float = 0.05):
        if bytes_per_s <= 0 or (ops_per_s is not None and ops_per_s <= 0):
            raise OptionError(f"RateLimiter: rates must be positive (bytes_per_s={bytes_per_s}, ops_per_s={ops_per_s})")
        self.bytes_per_s = float(bytes_per_s)
        self.ops_per_s = float(ops_per_s) if ops_per_s else None
        self.burst_s = burst_s
        self._lock = threading.Lock()
        self._next = time.monotonic()  # time at which the bucket is empty of reservations

    def acquire(self, nbytes: int) -> float:
        """Reserve ``nbytes`` (one operation) and sleep until the reservation is due. Returns seconds slept."""
        cost = max(nbytes, 0) / self.bytes_per_s
        if self.ops_per_s:
            cost = max(cost, 1.0 / self.ops_per_s)
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now - self.burst_s)  # unused time beyond the burst window is forfeited
            self._next = start + cost
            due = self._next
        wait = due - now
        if wait > 0:
            time.sleep(wait)
            return wait
        return 0.0

    def __repr__(self) -> str:
        return f"RateLimiter(bytes_per_s={self.bytes_per_s:.0f}, ops_per_s={self.ops_per_s})"


def from_env(environ: dict[str, str] | None = None) -> RateLimiter | None:
    """The limiter requested through ``EDGESPOOL_IO_BANDWIDTH`` / ``EDGESPOOL_IO_IOPS``, or None if unset."""
    env = os.environ if environ is None else environ
    bw = env.get(ENV_BANDWIDTH, "").strip()
    iops = env.get(ENV_IOPS, "").strip()
    if not bw and not iops:
        return None
    bps = float(parse_rate(bw, ENV_BANDWIDTH)) if bw else float("inf")
    ops = float(parse_rate(iops, ENV_IOPS)) if iops else None
    return RateLimiter(bps, ops)
