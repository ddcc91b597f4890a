"""What every model source (HF safetensors dir, GGUF file) gives the export pipeline."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np

from ..runtime.bundle.config import ModelConfig


# the named special tokens transformers gives chat templates (``PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES``)
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer as HF `tokenizers` JSON text plus the special-token settings the runtime needs.

    ``chat_template``: the model's Jinja chat template (None when the source has none). ``special_tokens``: the
    named special tokens' texts that chat templates read (``bos_token``, ``eos_token``, and ``unk_token`` /
    ``pad_token`` / ... where the source names them), as transformers passes them to ``apply_chat_template``."""

    json: str
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    add_bos: bool
    chat_template: str | None = None
    special_tokens: Mapping[str, str] = field(default_factory=dict)


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
