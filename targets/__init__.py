"""Hardware facts as data: named :class:`TargetProfile`s and lookup (see :mod:`.profiles`)."""
from .profiles import PROFILES, GpuSpec, StorageSpec, TargetProfile, get_target, target_names

__all__ = ["PROFILES", "GpuSpec", "StorageSpec", "TargetProfile", "get_target", "target_names"]
