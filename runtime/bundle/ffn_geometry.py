"""Row-column bundled FFN weights (LLM in a flash, Alizadeh et al. 2024): the ``neuron_bundles`` tensor layout.

A bundle exported with ``--ffn-layout bundled`` stores the gated FFN of each dense layer ``i`` not as three
matrices but as one tensor ``layers.{i}.ffn.bundles`` in its own streaming group ``layers.{i}.ffn_bundled``
(attention, norms and everything else keep the matrix layout). Row ``j`` of that tensor is neuron ``j``'s
*bundle*: everything the FFN needs of that neuron, next to each other, so ``n`` consecutive neurons are one read::

    [gate row j | up row j | down column j | gate scale | up scale | down scale | zero pad]   (bundle_bytes)

Each vector is stored in the tensor's scheme exactly as a row of a :class:`~edgespool.kernels.quant.QTensor`:
``gate``/``up`` rows are rows of the ``[I, H]`` matrices (the same bytes as the matrix layout), the ``down`` column
is row ``j`` of ``down.T`` (``[I, H]``) quantised per neuron (int8: one scale per column; int4: groups of
``group_size`` along ``H``), so f32/f16 bundles hold exactly the matrix layout's values and int8/int4 ones a
per-neuron quantisation of ``down``. ``bundle_bytes`` is a multiple of :data:`BUNDLE_ALIGN` (512) and the tensor
starts on a 4 KiB boundary, so any run of bundles is a valid O_DIRECT read.

The data part is ``uint8 [I, bundle_bytes]``; the manifest record carries ``"layout": "neuron_bundles"`` and a
``"bundle"`` object (:meth:`BundleGeometry.to_dict`). Bundles holding such a tensor are written with schema
version 2 (version-1 readers refuse them instead of misreading the bytes as a matrix).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import BundleError
from .names import ffn_group, ffn_tensor  # noqa: F401 (the layout's names)
from .schemes import SCHEMES, QTensor, get_scheme

LAYOUT = "neuron_bundles"
MATRIX = "matrix"
LAYOUTS = (MATRIX, LAYOUT)  # tensor layouts this edgespool reads
BUNDLE_ALIGN = 512  # O_DIRECT logical block size: bundle sizes are multiples of it
VECTORS = ("gate", "up", "down")  # order of the vectors in a bundle (down stored as a column = row of down.T)
PART_ALIGN = 16


def _up(n: int, a: int) -> int:
    return -(-n // a) * a


@dataclass(frozen=True)
class BundleGeometry:
    """Where each vector of a bundle lies: ``scheme`` of every vector, ``neurons`` (I) x ``hidden`` (H)."""

    scheme: str
    neurons: int
    hidden: int
    group_size: int = 0

    @property
    def data_bytes(self) -> int:
        """Bytes of one vector's data (``H`` values in the scheme)."""
        return get_scheme(self.scheme).row_data_bytes(self.hidden)

    @property
    def scale_bytes(self) -> int:
        """Bytes of one vector's scales (int8: one float32; int4: float16 per group; f32/f16: none)."""
        return get_scheme(self.scheme).row_scale_bytes(self.hidden, self.group_size)

    def data_offset(self, k: int) -> int:
        return k * _up(self.data_bytes, PART_ALIGN)

    def scale_offset(self, k: int) -> int:
        return len(VECTORS) * _up(self.data_bytes, PART_ALIGN) + k * _up(self.scale_bytes, PART_ALIGN)

    @property
    def payload_bytes(self) -> int:
        return self.scale_offset(len(VECTORS))

    @property
    def bundle_bytes(self) -> int:
        """Bytes of one neuron's bundle on flash and in memory (a multiple of :data:`BUNDLE_ALIGN`)."""
        return _up(self.payload_bytes, BUNDLE_ALIGN)

    @property
    def nbytes(self) -> int:
        return self.neurons * self.bundle_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"bytes": self.bundle_bytes, "align": BUNDLE_ALIGN, "vectors": list(VECTORS),
                "scheme": self.scheme, "group_size": self.group_size}

    @classmethod
    def from_record(cls, name: str, rec: dict[str, Any], where: str = "manifest") -> "BundleGeometry":
        """The geometry of tensor record ``rec`` (BundleError naming the tensor when it is inconsistent)."""
        try:
            I, H = (int(v) for v in rec["shape"])
            b = rec["bundle"]
            geo = cls(rec["scheme"], I, H, int(b.get("group_size", 0)))
            ok = (rec["scheme"] in SCHEMES and list(b["vectors"]) == list(VECTORS)
                  and int(b["bytes"]) == geo.bundle_bytes
                  and list(rec["parts"]["data"]["shape"]) == [I, geo.bundle_bytes])
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{where}: tensor {name!r} has a malformed neuron_bundles record ({e})") from None
        if not ok:
            raise BundleError(f"{where}: tensor {name!r}: neuron_bundles record does not match its geometry "
                              f"(scheme {rec.get('scheme')!r}, bundle {rec.get('bundle')}); re-export the bundle")
        return geo


def load_staging_bytes(bundle_bytes: int) -> int:
    """Staging buffer a streamed run uses to read a bundled FFN once at load (256 KiB, at least one bundle)."""
    return max(256 << 10, -(-bundle_bytes // 4096) * 4096)


def _vector_bytes(q: QTensor) -> tuple[np.ndarray, np.ndarray | None]:
    """(data, scale) of a 2-D QTensor as uint8 rows ``[rows, nbytes]``."""
    d = np.ascontiguousarray(q.data)
    d = d.view(np.uint8).reshape(d.shape[0], -1)
    if q.scale is None:
        return d, None
    s = np.ascontiguousarray(q.scale)
    return d, s.view(np.uint8).reshape(s.shape[0], -1)


@dataclass
class NeuronBundles:
    """A bundled FFN tensor: ``data`` uint8 ``[I, bundle_bytes]`` (rows of neuron bundles) and its geometry."""

    geometry: BundleGeometry
    data: np.ndarray

    @property
    def scheme(self) -> str:
        return self.geometry.scheme

    @property
    def shape(self) -> tuple[int, int]:
        return (self.geometry.neurons, self.geometry.hidden)

    @property
    def group_size(self) -> int:
        return self.geometry.group_size

    @property
    def scale(self) -> None:  # QTensor-like surface for code that walks tensor tables
        return None

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def vectors(self, rows: np.ndarray | None = None) -> tuple[QTensor, QTensor, QTensor]:
        """(gate ``[n, H]``, up ``[n, H]``, down_t ``[n, H]``) QTensors of bundles ``rows`` (all when None), as
        contiguous copies."""
        return unpack_bundles(self.geometry, self.data if rows is None else self.data[rows])


def unpack_bundles(geo: BundleGeometry, rows: np.ndarray) -> tuple[QTensor, QTensor, QTensor]:
    """(gate, up, down_t) QTensors ``[n, H]`` of bundle rows ``rows`` (uint8 ``[n, bundle_bytes]``), copied into
    contiguous arrays (values exactly as stored)."""
    n, H = rows.shape[0], geo.hidden
    spec = get_scheme(geo.scheme)
    db, sb = geo.data_bytes, geo.scale_bytes
    out = []
    for k in range(len(VECTORS)):
        raw = np.ascontiguousarray(rows[:, geo.data_offset(k): geo.data_offset(k) + db])
        rs = np.ascontiguousarray(rows[:, geo.scale_offset(k): geo.scale_offset(k) + sb]) if sb else None
        out.append(spec.rows_from_bytes(raw, rs, n, H, geo.group_size))
    return out[0], out[1], out[2]


def pack_bundles(gate: QTensor, up: QTensor, down_t: QTensor) -> NeuronBundles:
    """Bundle three ``[I, H]`` QTensors of one scheme (``down_t`` = ``down.T`` quantised row by row) into the
    ``neuron_bundles`` layout."""
    qs = (gate, up, down_t)
    if len({q.scheme for q in qs}) != 1 or len({tuple(q.shape) for q in qs}) != 1 or len(gate.shape) != 2:
        raise BundleError("neuron bundles need gate, up and down.T of one scheme and one [I, H] shape, got "
                          + ", ".join(f"{q.scheme}{tuple(q.shape)}" for q in qs))
    I, H = (int(v) for v in gate.shape)
    geo = BundleGeometry(gate.scheme, I, H, get_scheme(gate.scheme).group_size(gate.group_size))
    buf = np.zeros((I, geo.bundle_bytes), np.uint8)
    for k, q in enumerate(qs):
        d, s = _vector_bytes(q)
        buf[:, geo.data_offset(k): geo.data_offset(k) + geo.data_bytes] = d
        if s is not None:
            buf[:, geo.scale_offset(k): geo.scale_offset(k) + geo.scale_bytes] = s
    return NeuronBundles(geo, buf)
