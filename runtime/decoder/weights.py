"""The one interface through which the decoder loop gets its weights, and its resident implementation.

The engine asks for whole streaming groups (``embed``, ``layers.{i}``, ``layers.{i}.experts.{e}``, ``head``) in
the order it computes; a source may block until the bytes are there. Resident mode reads everything once at load;
the streaming sources of :mod:`edgespool.offload` implement the same protocol with a budgeted buffer pool.
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol, runtime_checkable

import numpy as np

from ...kernels.quant import QTensor
from ..bundle.reader import Bundle
from ..bundle.config import ModelConfig
from ..bundle.names import EMBED, FINAL_NORM, HEAD, LM_HEAD


@runtime_checkable
class WeightSource(Protocol):
    """What the decoder loop needs from weight storage."""

    config: ModelConfig

    def get(self, group: str) -> dict[str, QTensor]:
        """Return the tensors of ``group`` (blocking until they are in memory). Valid until ``release(group)``."""
        ...

    def release(self, group: str) -> None:
        """The engine is done with ``group`` for this step; a streaming source may evict it."""
        ...

    def hint(self, groups: list[str]) -> None:
        """Groups the engine expects to need soon (prefetch hint; may be ignored)."""
        ...

    def on_hidden(self, layer: int, hidden) -> None:
        """Called by the engine with the hidden state (``[T, H]`` float32, post-attention residual) just before the
        FFN/MoE block of ``layer``; a streaming source may apply layer+1's router to it to prefetch experts."""
        ...

    def close(self) -> None:
        """Release files, threads and buffers."""
        ...

    # Optional (the engine falls back to ``get(EMBED)`` / ``get(HEAD)`` without them): ``embed_rows(tokens)`` ->
    # float32 ``[T, H]``; ``head_norm()`` -> float32 ``[H]``; ``head_chunks()`` -> ``(first row, QTensor)`` row
    # pieces of the head in order, each valid until the next is asked for (a streamed head arrives in chunks).


class ResidentWeights:
    """Every group kept in memory for the whole run, read when the engine first asks for it.

    Loading reads nothing: each group is read into private memory with one checked read (and its CRC32 verified,
    ``verify``) the first time :meth:`get` asks for it, so ``load()`` returns at once and the first forward pass
    pays the reads (as llama.cpp's first pass pays its page-ins). ``mmap=True`` maps ``weights.bin`` read-only
    instead (llama.cpp's default; page-cache memory, shared and reclaimable, but 4 KiB pages: decode measured
    ~10% slower here than on private memory)."""

    # the engine may run decode rows through the one-C-call layers (fused_decode.py): ``get`` returns the same
    # tensors every call and nothing needs ``on_hidden`` between a layer's blocks
    serves_fused_decode = True

    def __init__(self, bundle: Bundle, verify: bool = True, mmap: bool = False) -> None:
        assert bundle.config is not None
        self.config = bundle.config
        self.bundle = bundle
        self.verify = verify
        self.resident_bytes = sum(g.nbytes for g in bundle.groups.values())
        self._map: np.ndarray | None = None
        self._groups: dict[str, dict[str, QTensor]] = {}
        self._prepare: Callable[[QTensor], QTensor] | None = None
        if mmap and self.resident_bytes:
            self._map = np.memmap(bundle.weights_path, dtype=np.uint8, mode="r")

    def get(self, group: str) -> dict[str, QTensor]:
        got = self._groups.get(group)
        if got is None:
            g = self.bundle.groups[group]  # KeyError for an unknown group, as before
            if self._map is None:
                got = self.bundle.read_group(group, verify=self.verify)
            else:
                buf = self._map[g.offset: g.offset + g.nbytes]
                got = {n: self.bundle.tensor_from_buffer(n, buf, g.offset, self.verify) for n in g.tensors}
            if self._prepare is not None:
                got = self._prepared(got)
            self._groups[group] = got
        return got

    def set_prepare(self, fn: Callable[[QTensor], QTensor] | None) -> None:
        """Pass every group through ``fn`` (tensor -> tensor: the C block kernels' repacking,
        ``BlockKernels.prepare_weight``) as it is read; groups already read are converted now. A group's read
        buffer is freed once converted (the tensors ``fn`` leaves alone are copied out of it), so the weights stay
        one copy in memory."""
        self._prepare = fn
        if fn is not None:
            for g, got in list(self._groups.items()):
                self._groups[g] = self._prepared(got)

    def _prepared(self, got: dict[str, QTensor]) -> dict[str, QTensor]:
        assert self._prepare is not None
        out = {n: self._prepare(t) if isinstance(t, QTensor) else t for n, t in got.items()}
        if self._map is None and any(out[n] is not got[n] for n in got):  # drop the read buffer: own the rest
            out = {n: t if t is not got[n] or not isinstance(t, QTensor) else
                   QTensor(t.scheme, t.shape, t.data.copy(), None if t.scale is None else t.scale.copy(),
                           t.group_size) for n, t in out.items()}
        return out

    def loaded_tensors(self) -> list[QTensor]:
        """The tensors read so far (in the kernels' layout where ``set_prepare`` converted them)."""
        return [t for got in self._groups.values() for t in got.values() if isinstance(t, QTensor)]

    def load_all(self) -> None:
        """Read (and verify) every group now."""
        for g in self.bundle.groups:
            self.get(g)

    def embed_rows(self, tokens: np.ndarray) -> np.ndarray:
        """float32 embedding rows ``[T, H]`` of ``tokens``."""
        return self.get(EMBED)[EMBED].rows(tokens)

    def head_norm(self) -> np.ndarray:
        """The final norm's weight (float32)."""
        return self.get(HEAD)[FINAL_NORM].dequantize()

    def head_chunks(self) -> Iterator[tuple[int, QTensor]]:
        """The head as one piece ``(0, tensor)`` (the embedding table when tied)."""
        if self.config.tie_word_embeddings or LM_HEAD not in self.bundle.tensors:
            yield 0, self.get(EMBED)[EMBED]
        else:
            yield 0, self.get(HEAD)[LM_HEAD]

    def release(self, group: str) -> None:
        return None

    def hint(self, groups: list[str]) -> None:
        return None

    def on_hidden(self, layer: int, hidden) -> None:
        return None

    def close(self) -> None:
        self._groups.clear()
        self._map = None
