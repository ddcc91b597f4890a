"""Run one untrusted input in a forked child with an address-space limit and a time limit, and classify what
happened: the outcome classes of the fuzz campaigns (docs/RELIABILITY.md).

Classes: ``clean`` (an EdgespoolError: the one-line error users are promised), ``accepted`` (no error; the
caller's ``judge`` decides whether the result is provably right: ``accepted-identical`` or ``accepted-wrong``),
``other-exception`` (any other exception: a bug), ``memory`` (MemoryError, or killed near the limit),
``crash`` (the child died of a signal), ``hang`` (past the time limit).
"""
from __future__ import annotations

import json
import os
import resource
import select
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CLASSES = ("clean", "accepted-identical", "accepted-wrong", "other-exception", "memory", "crash", "hang")
AS_LIMIT = 2 << 30  # bytes of address space a child may add to what it inherits


@dataclass
class Outcome:
    cls: str
    detail: str = ""
    value: Any = None


def _vsize() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def run_bounded(fn: Callable[[], Any], timeout_s: float = 30.0, as_limit: int = AS_LIMIT) -> Outcome:
    """Run ``fn()`` in a forked child limited to ``as_limit`` more bytes of address space and ``timeout_s``
    seconds. The child returns ``fn``'s value (it must be JSON-serialisable) or the exception's class and text."""
    from edgespool.errors import EdgespoolError

    r, w = os.pipe()
    base = _vsize()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 0
        try:
            lim = base + as_limit
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            try:
                v = fn()
                msg = {"cls": "accepted", "value": v}
            except EdgespoolError as e:
                text = str(e)
                msg = {"cls": "clean", "detail": f"{type(e).__name__}: {text}",
                       "multiline": "\n" in text.strip()}
            except MemoryError as e:
                msg = {"cls": "memory", "detail": f"MemoryError: {e}"}
            except BaseException as e:  # noqa: BLE001 - classifying every escape is the point
                tb = traceback.extract_tb(e.__traceback__)
                where = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else ""
                msg = {"cls": "other-exception", "detail": f"{type(e).__name__}: {str(e)[:300]} at {where}"}
            data = json.dumps(msg, default=repr).encode()
            view = memoryview(data)
            while view:
                n = os.write(w, view)
                view = view[n:]
        except BaseException:  # noqa: BLE001
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    status = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return Outcome("hang", f"no result after {timeout_s:.0f} s")
        ready, _, _ = select.select([r], [], [], min(left, 0.5))
        if ready:
            b = os.read(r, 1 << 16)
            if not b:
                break
            chunks.append(b)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return Outcome("crash", f"signal {os.WTERMSIG(status)}")
    try:
        msg = json.loads(b"".join(chunks))
    except ValueError:
        return Outcome("crash", f"exit status {status} without a result")
    if msg["cls"] == "clean" and msg.get("multiline"):
        return Outcome("other-exception", "a multi-line error message: " + msg["detail"][:200])
    return Outcome(msg["cls"], msg.get("detail", ""), msg.get("value"))
