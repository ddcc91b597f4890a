"""Neuron windowing for sparse (ReLU-family) FFNs, with row-column bundling (LLM in a flash, Alizadeh et al. 2024).

FFN kinds (``x`` ``[H]``, ``I`` neurons; ``b`` an optional pre-activation bias, pinned):

* ``relu``  (OPT-style):  ``y = down @ relu(up @ x + b)``
* ``reglu`` (gated ReLU): ``y = down @ (relu(gate @ x + b) * (up @ x))``

Neuron ``j`` contributes only when its ReLU is positive; with real ReLU models 90-97 % of neurons are zero for a
token, and the set changes slowly from token to token. So:

* **Row-column bundling** (the layout): neuron ``j``'s weights (row ``j`` of ``gate``/``up`` and column ``j`` of
  ``down``) are stored next to each other as one *bundle*: a 16-byte header of float32 scales, then the vectors
  (int8, one symmetric scale per vector; or float32), padded to :data:`BUNDLE_ALIGN` bytes so O_DIRECT can read any
  run of bundles. One read of ``n`` consecutive bundles fetches ``n`` whole neurons instead of 2-3 scattered rows.
* **Windowing**: each layer keeps the neurons used in the last ``window`` tokens in a fixed buffer of ``capacity``
  bundles; for a new token only the active neurons not in memory are read (runs of consecutive neuron ids coalesced
  into one read each), and neurons unused for ``window`` tokens are dropped.
* **Which neurons are active** must be known before the weights are read: a :class:`LowRankPredictor` (pinned
  rank-``r`` SVD factors of the pre-activation matrix, ``pred > -margin``) names them with a measured recall; the
  :class:`ExactPredictor` (the whole pre-activation matrix pinned) is exact and serves as the reference. A missed
  neuron (predicted inactive, truly active) is an error in the output: exactness only with the exact predictor.

SwiGLU models (Llama, Mistral, Mixtral) have no exact zeros (SiLU < 0 but != 0): windowing there is an
approximation (keep the neurons of largest predicted ``|silu(g) * u|``); ``benchmarks/neuron_bench.py`` measures the
error and bytes of both cases.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

import numpy as np

from ..errors import BudgetError, OptionError, StorageError
from ..runtime.bundle.checked_read import MODE_DIRECT, CheckedFile

BUNDLE_ALIGN = 512  # O_DIRECT logical block size: bundles and the file header are multiples of it
HEADER_BYTES = 16  # up to 3 float32 scales (+ pad)
KINDS = {"relu": ("up", "down"), "reglu": ("gate", "up", "down")}
MAGIC = b"ESNEURON"
FILE_HEADER = 4096


@dataclass(frozen=True)
class NeuronFileSpec:
    """Geometry of a neuron file: ``layers`` x ``neurons`` neurons. ``layout="bundled"``: one record per neuron
    (row-column bundle of ``bundle_bytes``); ``"split"``: the usual matrix layout, one region per vector type
    (gate rows, up rows, down columns), records of ``vector_record_bytes`` (scale + vector): a neuron is then
    ``len(vectors)`` separate reads. In memory a neuron is always a bundle (``bundle_bytes``)."""

    kind: str
    scheme: str  # "int8" | "f32"
    layers: int
    neurons: int
    hidden: int
    layout: str = "bundled"

    @property
    def vectors(self) -> tuple[str, ...]:
        return KINDS[self.kind]

    @property
    def payload_bytes(self) -> int:
        return HEADER_BYTES + len(self.vectors) * self.hidden * (1 if self.scheme == "int8" else 4)

    @property
    def bundle_bytes(self) -> int:
        return -(-self.payload_bytes // BUNDLE_ALIGN) * BUNDLE_ALIGN

    @property
    def vector_bytes(self) -> int:
        return self.hidden * (1 if self.scheme == "int8" else 4)

    @property
    def vector_record_bytes(self) -> int:
        return -(-(HEADER_BYTES + self.vector_bytes) // BUNDLE_ALIGN) * BUNDLE_ALIGN

    @property
    def layer_bytes(self) -> int:
        per = self.bundle_bytes if self.layout == "bundled" else len(self.vectors) * self.vector_record_bytes
        return self.neurons * per

    def offset(self, layer: int, neuron: int, vector: int = 0) -> int:
        """File offset of ``neuron``'s bundle (bundled) or of its ``vector``-th record (split)."""
        if self.layout == "bundled":
            return FILE_HEADER + (layer * self.neurons + neuron) * self.bundle_bytes
        return (FILE_HEADER + layer * self.layer_bytes
                + (vector * self.neurons + neuron) * self.vector_record_bytes)


def _q8(v: np.ndarray) -> tuple[np.ndarray, np.float32]:
    amax = float(np.abs(v).max())
    s = np.float32(amax / 127.0) if amax > 0 else np.float32(0.0)
    q = np.clip(np.rint(v / s), -127, 127).astype(np.int8) if s > 0 else np.zeros(v.shape, np.int8)
    return q, s


def write_neuron_file(path: str | os.PathLike, kind: str, layers: list[dict[str, np.ndarray]],
                      scheme: str = "int8", layout: str = "bundled") -> NeuronFileSpec:
    """Write FFN weights in the row-column ``bundled`` layout (or ``split``, the plain matrix layout, to measure
    what bundling gains). ``layers[i]`` maps ``gate``/``up`` (``[I, H]``) and ``down`` (``[H, I]``) to float
    arrays. Returns the file's spec (also stored in its 4 KiB header)."""
    if layout not in ("bundled", "split"):
        raise OptionError(f"neuron file layout {layout!r}; valid: bundled, split")
    if kind not in KINDS:
        raise OptionError(f"neuron FFN kind {kind!r}; valid: {', '.join(KINDS)}")
    if scheme not in ("int8", "f32"):
        raise OptionError(f"neuron bundle scheme {scheme!r}; valid: int8, f32")
    names = KINDS[kind]
    I, H = layers[0][names[0]].shape
    spec = NeuronFileSpec(kind, scheme, len(layers), int(I), int(H), layout)
    for i, lw in enumerate(layers):
        for n in names:
            want = (H, I) if n == "down" else (I, H)
            if lw[n].shape != want:
                raise OptionError(f"layer {i} tensor {n!r}: shape {lw[n].shape}, expected {want}")
    with open(path, "wb") as f:
        head = MAGIC + np.array([list(KINDS).index(kind), 0 if scheme == "int8" else 1, spec.layers, I, H,
                                 0 if layout == "bundled" else 1], dtype=np.int64).tobytes()
        f.write(head.ljust(FILE_HEADER, b"\0"))
        row = np.zeros(spec.bundle_bytes, dtype=np.uint8)
        rec = np.zeros(spec.vector_record_bytes, dtype=np.uint8)
        for lw in layers:
            vecs = [np.asarray(lw[n], np.float32) for n in names]
            if layout == "split":
                for n, w in zip(names, vecs):
                    for j in range(I):
                        v = w[:, j] if n == "down" else w[j]
                        rec[:] = 0
                        if scheme == "int8":
                            q, sc = _q8(v)
                            rec[:4] = np.array([sc], np.float32).view(np.uint8)
                            rec[HEADER_BYTES: HEADER_BYTES + H] = q.view(np.uint8)
                        else:
                            rec[HEADER_BYTES: HEADER_BYTES + 4 * H] = v.astype(np.float32).view(np.uint8)
                        f.write(rec.tobytes())
                continue
            for j in range(I):
                row[:] = 0
                pos = HEADER_BYTES
                scales = np.zeros(HEADER_BYTES // 4, np.float32)
                for k, (n, w) in enumerate(zip(names, vecs)):
                    v = w[:, j] if n == "down" else w[j]
                    if scheme == "int8":
                        q, scales[k] = _q8(v)
                        row[pos: pos + H] = q.view(np.uint8)
                        pos += H
                    else:
                        row[pos: pos + 4 * H] = v.astype(np.float32).view(np.uint8)
                        pos += 4 * H
                row[:HEADER_BYTES] = scales.view(np.uint8)
                f.write(row.tobytes())
    return spec


def read_spec(path: str | os.PathLike) -> NeuronFileSpec:
    """The spec stored in a neuron file's header (StorageError when it is not one)."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 48)
    if head[: len(MAGIC)] != MAGIC or len(head) < len(MAGIC) + 48:
        raise StorageError(f"{path}: not an edgespool neuron-bundle file (bad magic)")
    k, s, L, I, H, lay = (int(v) for v in np.frombuffer(head[len(MAGIC):], dtype=np.int64))
    spec = NeuronFileSpec(list(KINDS)[k], "int8" if s == 0 else "f32", L, I, H, "bundled" if lay == 0 else "split")
    need = FILE_HEADER + L * spec.layer_bytes
    if os.path.getsize(path) < need:
        raise StorageError(f"{path}: truncated ({os.path.getsize(path)} bytes, the header says {need})")
    return spec


def unpack_bundles(spec: NeuronFileSpec, rows: np.ndarray) -> dict[str, np.ndarray]:
    """float32 vectors of bundles ``rows`` (``[n, bundle_bytes]`` uint8): ``{name: [n, H]}`` (``down`` columns as
    rows)."""
    n, H = rows.shape[0], spec.hidden
    scales = rows[:, :HEADER_BYTES].copy().view(np.float32)
    out, pos = {}, HEADER_BYTES
    for k, name in enumerate(spec.vectors):
        if spec.scheme == "int8":
            out[name] = rows[:, pos: pos + H].view(np.int8).astype(np.float32) * scales[:, k: k + 1]
            pos += H
        else:
            out[name] = np.ascontiguousarray(rows[:, pos: pos + 4 * H]).view(np.float32).reshape(n, H)
            pos += 4 * H
    return out


class ExactPredictor:
    """The exact active set from the whole pre-activation matrix (``gate`` for reglu, ``up`` for relu) pinned in
    float32: recall 1 by construction, at the memory cost of that matrix."""

    def __init__(self, pre: list[np.ndarray], bias: list[np.ndarray | None] | None = None) -> None:
        self.pre = [np.asarray(w, np.float32) for w in pre]
        self.bias = bias or [None] * len(pre)

    def scores(self, layer: int, x: np.ndarray) -> np.ndarray:
        """Pre-activations ``[I]`` of layer ``layer`` for ``x`` ``[H]`` (bias included)."""
        s = self.pre[layer] @ x
        return s if self.bias[layer] is None else s + self.bias[layer]

    def active(self, layer: int, x: np.ndarray) -> np.ndarray:
        """Sorted ids of the neurons whose ReLU is positive for ``x``."""
        return np.nonzero(self.scores(layer, x) > 0)[0]

    @property
    def nbytes(self) -> int:
        """Memory the predictor pins (bytes)."""
        return sum(w.nbytes for w in self.pre)


class LowRankPredictor(ExactPredictor):
    """Pre-activations from rank-``rank`` SVD factors ``U [I, r]``, ``V [r, H]`` of the pre-activation matrix;
    a neuron is predicted active when its predicted pre-activation exceeds ``-margin``."""

    def __init__(self, pre: list[np.ndarray], rank: int, margin: float = 0.0,
                 bias: list[np.ndarray | None] | None = None) -> None:
        self.U, self.V = [], []
        for w in pre:
            u, s, vt = np.linalg.svd(np.asarray(w, np.float32), full_matrices=False)
            self.U.append(np.ascontiguousarray(u[:, :rank] * s[:rank]).astype(np.float32))
            self.V.append(np.ascontiguousarray(vt[:rank]).astype(np.float32))
        self.margin = margin
        self.bias = bias or [None] * len(pre)

    def calibrate(self, xs: list[np.ndarray], exact: ExactPredictor, recall: float) -> float:
        """Set ``margin`` to the smallest value reaching ``recall`` of the exact active sets over the calibration
        inputs ``xs`` (all layers pooled); returns it."""
        gaps = []  # -(predicted score) of every truly active neuron: active when margin > gap
        for x in xs:
            for li in range(len(self.U)):
                act = exact.active(li, x)
                gaps.append(-self.scores(li, x)[act])
        g = np.sort(np.concatenate(gaps))
        self.margin = float(g[min(len(g) - 1, int(np.ceil(recall * len(g))) - 1)]) + 1e-6 if g.size else 0.0
        return self.margin

    def scores(self, layer: int, x: np.ndarray) -> np.ndarray:
        """Predicted pre-activations ``[I]`` (rank-``r`` approximation, bias included)."""
        s = self.U[layer] @ (self.V[layer] @ x)
        return s if self.bias[layer] is None else s + self.bias[layer]

    def active(self, layer: int, x: np.ndarray) -> np.ndarray:
        """Sorted ids of the neurons predicted active (predicted pre-activation > -margin)."""
        return np.nonzero(self.scores(layer, x) > -self.margin)[0]

    @property
    def nbytes(self) -> int:
        return sum(u.nbytes + v.nbytes for u, v in zip(self.U, self.V))


class NeuronWindow:
    """Per-layer windows of neuron bundles read from a neuron file into fixed buffers of ``capacity`` bundles.

    ``ffn(layer, x, active)`` makes the bundles of ``active`` resident (reading only the missing ones, coalesced
    into runs) and returns the FFN output computed from exactly those neurons. ``end_token()`` advances the window:
    neurons unused for ``window`` tokens are dropped. Memory: ``layers * capacity * bundle_bytes`` (+ 1 MiB
    staging), fixed at construction; more active neurons than ``capacity`` raise BudgetError."""

    def __init__(self, path: str | os.PathLike, capacity: int, window: int = 5, *, direct: bool | None = None,
                 bias: list[np.ndarray | None] | None = None, staging_bytes: int = 1 << 20) -> None:
        self.path = os.fspath(path)
        self.spec = spec = read_spec(path)
        if capacity < 1 or window < 1:
            raise OptionError(f"neuron window: capacity ({capacity}) and window ({window}) must be >= 1")
        self.capacity = min(capacity, spec.neurons)
        self.window = window
        self.bias = bias or [None] * spec.layers
        B = spec.bundle_bytes
        self._buf = mmap.mmap(-1, spec.layers * self.capacity * B)
        self.slots = np.frombuffer(self._buf, np.uint8).reshape(spec.layers, self.capacity, B)
        self._stage_map = mmap.mmap(-1, max(B, staging_bytes // B * B))
        self._stage = np.frombuffer(self._stage_map, np.uint8)
        self._rows = np.empty((max(1, len(self._stage) // B), B), np.uint8)  # bundles assembled from a run
        self.where = [dict() for _ in range(spec.layers)]  # neuron -> slot
        self.last = [dict() for _ in range(spec.layers)]  # neuron -> token of last use
        self.free = [list(range(self.capacity - 1, -1, -1)) for _ in range(spec.layers)]
        self.token = 0
        self.file = CheckedFile(self.path, direct)  # every read: CheckedFile.read_into (O_DIRECT where allowed)
        self.direct = self.file.mode == MODE_DIRECT
        self.bytes_read = 0
        self.reads = 0
        self.loaded = 0
        self.requested = 0

    def _pread(self, start: int, n: int, off: int, what: str) -> np.ndarray:
        self.file.read_into(off, memoryview(self._stage)[start: start + n], what)
        self.bytes_read += n
        self.reads += 1
        return self._stage[start: start + n]

    def _read_run(self, layer: int, first: int, count: int, out: np.ndarray) -> None:
        """Read neurons ``first .. first+count-1`` of ``layer`` into the bundle rows ``out`` ``[count, B]``:
        one read (bundled) or one per vector type (split, reassembled into bundles)."""
        sp, B = self.spec, self.spec.bundle_bytes
        what = f"layer {layer} neurons {first}..{first + count - 1}"
        if sp.layout == "bundled":
            out[...] = self._pread(0, count * B, sp.offset(layer, first), what).reshape(count, B)
            return
        R, vb = sp.vector_record_bytes, sp.vector_bytes
        out[:, :HEADER_BYTES] = 0
        for k in range(len(sp.vectors)):
            recs = self._pread(0, count * R, sp.offset(layer, first, k), what).reshape(count, R)
            out[:, 4 * k: 4 * k + 4] = recs[:, :4]
            out[:, HEADER_BYTES + k * vb: HEADER_BYTES + (k + 1) * vb] = recs[:, HEADER_BYTES: HEADER_BYTES + vb]

    def _make_room(self, layer: int, need: int, keep: set[int]) -> None:
        free, where, last = self.free[layer], self.where[layer], self.last[layer]
        if len(free) >= need:
            return
        victims = sorted((t, j) for j, t in last.items() if j not in keep)
        for _, j in victims[: need - len(free)]:
            free.append(where.pop(j))
            del last[j]
        if len(free) < need:
            raise BudgetError(f"neuron window of layer {layer}: {len(keep)} active neurons exceed its capacity of "
                              f"{self.capacity} bundles; raise the capacity (memory) or the predictor's threshold")

    def load(self, layer: int, active: np.ndarray) -> np.ndarray:
        """Make the bundles of ``active`` (sorted unique neuron ids) resident; returns their slot indices."""
        active = np.unique(np.asarray(active, dtype=np.int64))
        where, last = self.where[layer], self.last[layer]
        missing = [int(j) for j in active if int(j) not in where]
        self.requested += len(active)
        self._make_room(layer, len(missing), set(int(j) for j in active))
        per_read = len(self._stage) // max(self.spec.bundle_bytes, self.spec.vector_record_bytes)
        i = 0
        while i < len(missing):  # runs of consecutive neuron ids, at most one staging buffer each
            k = i + 1
            while k < len(missing) and missing[k] == missing[k - 1] + 1 and k - i < per_read:
                k += 1
            rows = self._rows[: k - i]
            self._read_run(layer, missing[i], k - i, rows)
            for r, j in enumerate(missing[i:k]):
                s = self.free[layer].pop()
                self.slots[layer, s] = rows[r]
                where[j] = s
            self.loaded += k - i
            i = k
        for j in active:
            last[int(j)] = self.token
        return np.array([where[int(j)] for j in active], dtype=np.int64)

    def ffn(self, layer: int, x: np.ndarray, active: np.ndarray) -> np.ndarray:
        """FFN output ``[H]`` of ``x`` ``[H]`` computed from the neurons ``active`` only (read as needed)."""
        active = np.unique(np.asarray(active, dtype=np.int64))
        x = np.asarray(x, np.float32)
        if active.size == 0:
            return np.zeros(self.spec.hidden, np.float32)
        v = unpack_bundles(self.spec, self.slots[layer, self.load(layer, active)])
        first = "gate" if self.spec.kind == "reglu" else "up"
        pre = v[first] @ x
        if self.bias[layer] is not None:
            pre = pre + self.bias[layer][active]
        h = np.maximum(pre, 0)
        if self.spec.kind == "reglu":
            h = h * (v["up"] @ x)
        return (v["down"].T @ h).astype(np.float32)

    def end_token(self) -> None:
        """Advance the window: drop neurons not used in the last ``window`` tokens."""
        for layer in range(self.spec.layers):
            last, where, free = self.last[layer], self.where[layer], self.free[layer]
            for j in [j for j, t in last.items() if t <= self.token - self.window]:
                free.append(where.pop(j))
                del last[j]
        self.token += 1

    @property
    def resident_bytes(self) -> int:
        """The fixed window buffers (what the windows may hold at most)."""
        return self.slots.nbytes

    def stats(self) -> dict:
        """Bytes and reads so far, neurons loaded vs requested (reuse = 1 - loaded / requested)."""
        return {"bytes_read": self.bytes_read, "reads": self.reads, "neurons_loaded": self.loaded,
                "neurons_requested": self.requested, "tokens": self.token,
                "reuse": 1 - self.loaded / self.requested if self.requested else None,
                "bundle_bytes": self.spec.bundle_bytes, "io": "O_DIRECT" if self.direct else "buffered"}

    def close(self) -> None:
        """Close the file (the buffers go with the object)."""
        self.file.close()
