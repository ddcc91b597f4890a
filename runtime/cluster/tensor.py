"""Tensor parallel (issue 19, for fast links): every board runs every layer on its share of the heads and FFN
columns, and the partial block outputs are summed across boards: one allreduce after attention and one after the
FFN of each layer (Megatron-style: q/k/v and gate/up split by output rows, wo and down by input columns).

:class:`ShardWeights` is a weight source holding only board ``rank``'s slices of each layer (stored bytes, sliced
on the quantisation grid: no re-quantisation) with a config of ``heads / n`` query heads, ``kv_heads / n`` KV
heads and ``intermediate / n`` FFN columns, so the unchanged engine computes the board's share and its KV cache
holds only its heads; the engine calls ``reduce_partial`` on each block output (an additive engine hook).
The embedding is whole on every board; the head is split by vocabulary rows (:meth:`ShardWeights.head_chunks`:
each board computes the logits of its rows ``vocab_range`` only, the rest of the engine's logits row is left
unset) and the greedy token is the best of the boards' local maxima.

:class:`Allreduce` sums float32 buffers over MPI point-to-point messages (raw buffers, receive deadlines as the
pipeline's :class:`~edgespool.runtime.cluster.transport.Link`): ``star`` (everyone sends to rank 0, which adds in
rank order and sends the sum back: 2(n-1) messages at the root per allreduce) or ``ring`` (reduce-scatter then
allgather of n chunks: 2(n-1) messages of 1/n of the buffer per board). Every board ends with the same bytes.
Dense decoder models only (no MoE, no bundled FFN)."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ...errors import ClusterError, OptionError
from ..bundle.names import EMBED, FINAL_NORM, HEAD, LM_HEAD, layer_prefix, parse_group
from ..bundle.reader import Bundle
from ..bundle.schemes import QTensor
from ..decoder.weights import ResidentWeights

_ROW = ("wq", "bq", "wk", "bk", "wv", "bv", "ffn.gate", "ffn.up")
_COL = ("wo", "ffn.down")


def check_tensor_parallel(config, n: int) -> None:
    """Raise OptionError unless ``config`` splits ``n`` ways (heads, KV heads, FFN columns; dense only)."""
    if n < 1:
        raise OptionError(f"tensor parallel over {n} boards: at least 1")
    if config.is_moe or config.num_experts:
        raise OptionError("tensor parallel: dense models only (MoE experts are not split)")
    if config.qk_norm and not config.qk_norm_per_head:
        raise OptionError("tensor parallel: a q/k norm over the whole projection cannot be split by heads")
    for what, v in (("query heads", config.num_heads), ("KV heads", config.num_kv_heads),
                    ("FFN columns", config.intermediate_size)):
        if v % n:
            raise OptionError(f"tensor parallel over {n} boards: the model's {v} {what} do not split {n} ways")


def row_slice(t: QTensor, a: int, b: int) -> QTensor:
    """Rows ``[a, b)`` (output channels) of ``t``, stored bytes unchanged (a 1-D tensor: elements)."""
    scale = None if t.scale is None else np.ascontiguousarray(t.scale[a:b])
    return QTensor(t.scheme, (b - a, *t.shape[1:]), np.ascontiguousarray(t.data[a:b]), scale, t.group_size)


def col_slice(t: QTensor, a: int, b: int) -> QTensor:
    """Columns ``[a, b)`` (input features) of the 2-D ``t``, on its storage grid (packed values, scale groups):
    raises OptionError when the cut falls inside a pack or a scale group."""
    rows, width = t.shape
    def cut(arr: np.ndarray) -> np.ndarray:
        per = arr.shape[1] / width
        lo, hi = a * per, b * per
        if lo != int(lo) or hi != int(hi):
            raise OptionError(f"tensor parallel: columns [{a}, {b}) of a {t.scheme} tensor cut a storage group")
        return np.ascontiguousarray(arr[:, int(lo):int(hi)])
    scale = t.scale
    if scale is not None and scale.ndim == 2 and scale.shape[1] > 1:
        scale = cut(scale)
    return QTensor(t.scheme, (rows, b - a), cut(t.data), scale, t.group_size)


def shard_bounds(config, short: str, rank: int, n: int) -> tuple[int, int]:
    """Board ``rank`` of ``n``'s slice ``[a, b)`` of layer tensor ``short`` (``wq``, ``ffn.down``, ...): rows of
    q/k/v (its heads) and gate/up (its FFN columns), columns of wo and down."""
    D = config.head_dim
    if short in ("wq", "bq", "wo"):
        per = config.num_heads // n * D
    elif short in ("wk", "bk", "wv", "bv"):
        per = config.num_kv_heads // n * D
    else:
        per = config.intermediate_size // n
    return rank * per, (rank + 1) * per


def shard_group(tensors: dict[str, QTensor], layer: int | None, config, rank: int, n: int) -> dict[str, QTensor]:
    """Board ``rank`` of ``n``'s share of one group's ``tensors`` (full names; ``layer`` None: not a layer group,
    returned whole): q/k/v and gate/up by output rows, wo and down by input columns, norms whole; stored bytes
    sliced on the quantisation grid (:func:`row_slice`, :func:`col_slice`)."""
    out: dict[str, QTensor] = {}
    for name, t in tensors.items():
        short = name[len(layer_prefix(layer)):] if layer is not None else name
        if short in _ROW:
            out[name] = row_slice(t, *shard_bounds(config, short, rank, n))
        elif short in _COL:
            out[name] = col_slice(t, *shard_bounds(config, short, rank, n))
        else:
            out[name] = t
    return out


def vocab_range(vocab_size: int, rank: int, n: int) -> tuple[int, int]:
    """Board ``rank`` of ``n``'s rows ``[lo, hi)`` of the head (and, in a shard bundle, of the embedding)."""
    per = -(-vocab_size // n)
    return min(vocab_size, rank * per), min(vocab_size, (rank + 1) * per)


def shard_config(config, n: int):
    """The model config of one board's share: ``heads / n``, ``KV heads / n``, ``FFN columns / n``."""
    check_tensor_parallel(config, n)
    return replace(config, num_heads=config.num_heads // n, num_kv_heads=config.num_kv_heads // n,
                   intermediate_size=config.intermediate_size // n)


class ShardWeights:
    """Board ``rank`` of ``n``'s slices of ``bundle``'s layers (see the module docstring)."""

    def __init__(self, bundle: Bundle, rank: int, n: int, reduce: Callable[[np.ndarray], np.ndarray]) -> None:
        cfg = bundle.config
        check_tensor_parallel(cfg, n)
        self.base = ResidentWeights(bundle)
        self.rank, self.n, self._reduce = rank, n, reduce
        self.config = shard_config(cfg, n)
        self._groups: dict[str, dict[str, QTensor]] = {}
        self._prepare: Callable[[QTensor], QTensor] | None = None
        self.resident_bytes = 0
        self.vocab_range = vocab_range(cfg.vocab_size, rank, n)
        self._head: QTensor | None = None

    def get(self, group: str) -> dict[str, QTensor]:
        got = self._groups.get(group)
        if got is None:
            full = self.base.get(group)
            layer = parse_group(group).layer
            got = shard_group(full, layer, self.base.config, self.rank, self.n)
            if layer is not None:
                self.base._groups.pop(group, None)  # keep only the slices
            if self._prepare is not None:
                got = {k: self._prepare(v) for k, v in got.items()}
            self.resident_bytes += sum(v.nbytes for v in got.values())
            self._groups[group] = got
        return got

    def head_norm(self) -> np.ndarray:
        """The final norm's weight (float32)."""
        return self.base.get(HEAD)[FINAL_NORM].dequantize()

    def head_chunks(self):
        """This board's rows of the head (the engine's streamed-head protocol): one piece, ``vocab_range``."""
        if self._head is None:
            b = self.base.bundle
            tied = self.base.config.tie_word_embeddings or LM_HEAD not in b.tensors
            full = self.base.get(EMBED)[EMBED] if tied else self.base.get(HEAD)[LM_HEAD]
            t = row_slice(full, *self.vocab_range)
            self._head = self._prepare(t) if self._prepare is not None else t
            self.resident_bytes += self._head.nbytes
        yield self.vocab_range[0], self._head

    def set_prepare(self, fn: Callable[[QTensor], QTensor] | None) -> None:
        """The kernels' weight layout (the engine's call): applied to the slices as they are made."""
        self._prepare = fn

    def reduce_partial(self, x: np.ndarray) -> np.ndarray:
        """Sum this board's partial block output with the other boards' (the engine's hook)."""
        return self._reduce(x)

    def release(self, group: str) -> None:
        pass

    def hint(self, groups) -> None:
        pass

    def on_hidden(self, layer: int, hidden) -> None:
        pass


@dataclass
class AllreduceStats:
    calls: int = 0
    sent_bytes: int = 0
    sent_messages: int = 0
    wait_s: float = 0.0  # time inside allreduce (transfers + waiting for the slowest board)


class Allreduce:
    """Sum float32 arrays over ``comm`` (``star`` or ``ring``); ``simulated_latency_s`` sleeps before each send
    (a SIMULATED one-way link latency, as the pipeline's); a receive that waits longer than ``timeout_s`` raises
    :class:`ClusterError`."""

    def __init__(self, comm, algo: str = "ring", timeout_s: float = 30.0, simulated_latency_s: float = 0.0) -> None:
        if algo not in ("star", "ring"):
            raise OptionError(f"allreduce {algo!r}: star or ring")
        self.comm, self.algo, self.timeout_s, self.latency = comm, algo, float(timeout_s), float(simulated_latency_s)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.stats = AllreduceStats()

    def _send(self, buf: np.ndarray, dest: int):
        if self.latency:
            time.sleep(self.latency)
        self.stats.sent_bytes += int(buf.nbytes)
        self.stats.sent_messages += 1
        return self.comm.Isend(buf, dest=dest, tag=7)

    def _recv(self, buf: np.ndarray, source: int) -> None:
        self._wait(self.comm.Irecv(buf, source=source, tag=7), source, "sent nothing")

    def _wait(self, req, peer: int, what: str = "took none of our data") -> None:
        """Complete ``req`` (a receive from / a send to ``peer``) under the deadline: a send larger than MPI's
        eager limit completes only once the peer receives it, so a dead or cut-off peer must not block it forever.
        Spins for the first 20 ms (an allreduce waits about the other board's block), then polls."""
        t0 = time.perf_counter()
        while not req.Test():
            now = time.perf_counter()
            if now - t0 > self.timeout_s:
                req.Cancel()
                raise ClusterError(f"board rank {peer} {what} for {self.timeout_s:g} s during an allreduce: "
                                   "it was killed, crashed or its link is cut")
            if now - t0 > 0.02:
                time.sleep(0.0005)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.size == 1:
            return x
        t0 = time.perf_counter()
        flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        out = self._star(flat) if self.algo == "star" else self._ring(flat)
        self.stats.calls += 1
        self.stats.wait_s += time.perf_counter() - t0
        return out.reshape(x.shape)

    def _star(self, flat: np.ndarray) -> np.ndarray:
        if self.rank != 0:
            req = self._send(flat, 0)
            out = np.empty_like(flat)
            self._recv(out, 0)
            self._wait(req, 0)
            return out
        total = flat.copy()
        tmp = np.empty_like(flat)
        for r in range(1, self.size):  # rank order: the same sum every run
            self._recv(tmp, r)
            total += tmp
        reqs = [self._send(total, r) for r in range(1, self.size)]
        for r, q in enumerate(reqs, 1):
            self._wait(q, r)
        return total

    def _ring(self, flat: np.ndarray) -> np.ndarray:
        n, r = self.size, self.rank
        right, left = (r + 1) % n, (r - 1) % n
        edges = [len(flat) * i // n for i in range(n + 1)]
        buf = flat.copy()
        tmp = np.empty(max(edges[i + 1] - edges[i] for i in range(n)), np.float32)
        for s in range(n - 1):  # reduce-scatter: after it, board r holds the full sum of chunk (r + 1) % n
            send_c, recv_c = (r - s) % n, (r - s - 1) % n
            req = self._send(buf[edges[send_c]:edges[send_c + 1]], right)
            m = edges[recv_c + 1] - edges[recv_c]
            self._recv(tmp[:m], left)
            buf[edges[recv_c]:edges[recv_c + 1]] += tmp[:m]
            self._wait(req, right)
        for s in range(n - 1):  # allgather the reduced chunks
            send_c, recv_c = (r + 1 - s) % n, (r - s) % n
            req = self._send(buf[edges[send_c]:edges[send_c + 1]], right)
            m = edges[recv_c + 1] - edges[recv_c]
            self._recv(tmp[:m], left)
            buf[edges[recv_c]:edges[recv_c + 1]] = tmp[:m]
            self._wait(req, right)
        return buf
