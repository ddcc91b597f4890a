"""What every model source (HF safetensors dir, GGUF file) gives the export pipeline."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..runtime.bundle.config import ModelConfig


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer as HF `tokenizers` JSON text plus the special-token settings the runtime needs."""

    json: str
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    add_bos: bool


class SourceModel(Protocol):
    """A decoder model opened from some format, exposed with canonical names (see runtime/config.py)."""

    path: Path
    format: str  # "hf" or "gguf"
    config: ModelConfig

    def tensor(self, name: str) -> np.ndarray:
        """Canonical tensor ``name`` as float32 (dequantised if the source stores it quantised). Raises
        ModelFormatError naming the file and the source tensor when it is missing or has the wrong shape."""
        ...

    def tokenizer(self) -> TokenizerSpec:
        """The model's tokenizer converted to `tokenizers` JSON."""
        ...

    def close(self) -> None:
        ...
