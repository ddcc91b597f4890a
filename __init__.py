"""edgespool: run models that are too big for the board.

Public Python API::

    from edgespool import load
    m = load("bundle/")                       # or load("bundle/", memory_budget="512MiB")
    for piece in m.generate("Hi", max_tokens=8):
        print(piece, end="")
"""
from __future__ import annotations

from typing import Any

from .errors import (
    BudgetError,
    BundleError,
    ChatTemplateError,
    DeployError,
    EdgespoolError,
    ModelFormatError,
    OptionError,
    StorageError,
    TargetError,
    UnsupportedModelError,
)

__version__ = "0.1.0"


def load(path: str, **kwargs: Any):
    """Load a bundle directory and return a :class:`edgespool.runtime.api.Model` ready to generate."""
    from .runtime.api import load as _load

    return _load(path, **kwargs)


__all__ = [
    "load",
    "EdgespoolError",
    "BundleError",
    "BudgetError",
    "UnsupportedModelError",
    "ModelFormatError",
    "TargetError",
    "DeployError",
    "StorageError",
    "OptionError",
    "ChatTemplateError",
    "__version__",
]
