"""The one error hierarchy of edgespool.

Every error a user can cause is an :class:`EdgespoolError`; its message is one line that says what was expected,
what was found and what to do. The CLI prints ``error: <message>`` and exits 1 (a traceback only with ``--debug``).
"""
from __future__ import annotations


class EdgespoolError(Exception):
    """Base class of every error edgespool raises on purpose."""


class BundleError(EdgespoolError):
    """A bundle is missing, malformed, truncated, corrupt, or from an unknown schema version."""


class BudgetError(EdgespoolError):
    """A memory budget is too small for the model's minimum working set (the message names the minimum)."""


class UnsupportedModelError(EdgespoolError):
    """The model's architecture, tensor type or operator is not supported (the message lists what is)."""


class ModelFormatError(EdgespoolError):
    """A model file (config.json, safetensors, GGUF, ONNX) is malformed or missing a tensor."""


class TargetError(EdgespoolError):
    """An unknown target name or a target that cannot run what was asked."""


class DeployError(EdgespoolError):
    """Deploying or running on a device/rig failed."""


class RigError(DeployError):
    """The emulated Pi/Jetson rig could not apply or clean up a limit."""


class StorageError(EdgespoolError):
    """Reading weights from storage failed (truncated or removed file, I/O error)."""


class OptionError(EdgespoolError):
    """A user-supplied option has an invalid value (the message names the option)."""


class ChatTemplateError(EdgespoolError):
    """A chat template is missing, does not compile, or raised while rendering (the message carries the
    template's own message)."""


class ClusterError(EdgespoolError):
    """A board of a cluster run (issue 19) failed, vanished, stopped answering, or the run could not start."""
