"""Point-to-point messages between pipeline stages over MPI (mpi4py): raw buffers only, never pickle.

One message per hop: hidden states are a float32 buffer ``[T, H]`` whose length gives T (``Get_count``), its
*tag* says what it is (:data:`CHUNK` a prompt chunk with no logits wanted, :data:`FINAL` the step whose last row
goes through the head, :data:`STOP`), and the sampled token returns to the first stage as one int64.

Every receive is an ``Irecv`` polled with ``Test`` under a deadline: a killed board or a cut link raises
:class:`ClusterError` on the others within ``timeout_s`` (the caller then ends the job with ``Abort``), never a hang.
``simulated_latency_s`` sleeps that long before each send: a SIMULATED one-way link latency (netem is absent on
this kernel and MPI's TCP traffic cannot go through the userspace delay proxy); it is labelled so in every report.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ...errors import ClusterError

CHUNK, FINAL, STOP, TOKEN = 1, 2, 3, 4
__all__ = ["CHUNK", "FINAL", "STOP", "TOKEN", "ClusterError", "Link", "LinkStats"]


@dataclass
class LinkStats:
    sent_bytes: int = 0
    sent_messages: int = 0
    recv_bytes: int = 0
    recv_messages: int = 0
    wait_s: float = 0.0  # time blocked in receives


class Link:
    """This rank's end of the pipeline's links over ``comm`` (an mpi4py communicator)."""

    def __init__(self, comm, timeout_s: float = 30.0, simulated_latency_s: float = 0.0,
                 names: list[str] | None = None) -> None:
        self.comm, self.timeout_s, self.latency = comm, float(timeout_s), float(simulated_latency_s)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.names = names or [f"rank {r}" for r in range(self.size)]
        self.stats = LinkStats()

    def send(self, buf: np.ndarray, dest: int, tag: int) -> None:
        buf = np.ascontiguousarray(buf)
        if self.latency:
            time.sleep(self.latency)  # simulated link latency (see the module docstring)
        self._wait(self.comm.Isend(buf, dest=dest, tag=tag), dest, "took none of our data")
        self.stats.sent_bytes += int(buf.nbytes)
        self.stats.sent_messages += 1

    def _wait(self, req, peer: int, what: str, status=None) -> None:
        """Complete ``req`` under the deadline (a send larger than MPI's eager limit completes only once the peer
        receives it: a dead or cut-off peer must not block it forever)."""
        t0 = time.perf_counter()
        sleep = 0.0
        while not (req.Test(status) if status is not None else req.Test()):
            if time.perf_counter() - t0 > self.timeout_s:
                req.Cancel()
                raise ClusterError(f"board {self.names[peer]} {what} for {self.timeout_s:g} s: it was killed, "
                                   "crashed or its link is cut")
            time.sleep(sleep)
            sleep = min(0.001, sleep + 0.00005)  # spin briefly, then poll every ms

    def recv(self, buf: np.ndarray, source: int, tag: int = -1) -> tuple[int, int]:
        """Receive into ``buf`` from ``source`` (any tag when ``tag`` is -1); returns (tag, elements received).
        Raises :class:`ClusterError` when nothing arrives within the timeout."""
        from mpi4py import MPI

        t0 = time.perf_counter()
        req = self.comm.Irecv(buf, source=source, tag=MPI.ANY_TAG if tag < 0 else tag)
        status = MPI.Status()
        self._wait(req, source, "sent nothing", status)
        n = status.Get_count(MPI.BYTE) // buf.itemsize
        self.stats.wait_s += time.perf_counter() - t0
        self.stats.recv_bytes += n * buf.itemsize
        self.stats.recv_messages += 1
        return status.Get_tag(), n
