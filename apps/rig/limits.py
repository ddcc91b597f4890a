"""Parse rig limits ("1GiB", "90MB/s", "3") and resolve a target profile + flags into one :class:`RigLimits`.

Units: SI (kB, MB, GB = 10^3, 10^6, 10^9) and binary (KiB, MiB, GiB = 2^10, 2^20, 2^30); a bare number is bytes.
Bandwidths take the same units with ``/s`` (``90MB/s``, ``1.3GB/s``, ``440M/s``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ...errors import OptionError, TargetError
from ...targets import TargetProfile
from ...units import parse_bytes, parse_count, parse_rate


@dataclass(frozen=True)
class RigLimits:
    """The limits one rig run applies (None = not limited), and where each value came from."""

    memory: int | None  # bytes, includes page cache when applied through a memory cgroup
    read_bandwidth: int | None  # bytes/s on the block device(s) backing the command's files
    read_iops: int | None  # read operations/s on the same device(s)
    cores: int | None  # CPUs the command may run on
    profile: str | None = None  # target profile name the defaults came from
    storage: str | None = None  # storage medium of the profile (e.g. "microsd")
    sources: tuple[tuple[str, str], ...] = ()  # (limit name, "profile rpi5" | "--memory" | ...)
    notes: tuple[str, ...] = ()  # e.g. cores capped by the host

    def source(self, name: str) -> str:
        """Where the value of limit ``name`` came from (``""`` when unlimited)."""
        return dict(self.sources).get(name, "")


def resolve_limits(profile: TargetProfile | None, storage: str | None = None, memory: str | None = None,
                   read_bandwidth: str | None = None, read_iops: str | int | None = None,
                   cores: str | int | None = None, host_cores: int | None = None) -> RigLimits:
    """Combine a target profile (RAM, cores, storage medium speed) with explicit flags; flags win.

    ``storage`` picks the profile's medium (default: its first). ``host_cores`` (default: this process's affinity)
    caps ``cores``: the rig cannot give more CPUs than the host has, and says so in ``notes``.
    """
    if profile is not None and profile.kind != "linux":
        raise TargetError(f"target {profile.name!r} is an MCU ({profile.ram} bytes of SRAM): the rig emulates Linux "
                          "boards; use rpi4, rpi5, jetson-nano or jetson-orin-nano")
    if storage is not None and profile is None:
        raise OptionError("--storage needs --profile (the medium's speed comes from the target profile)")
    sources: dict[str, str] = {}
    notes: list[str] = []
    mem = bw = iops = ncores = None
    medium = None
    if profile is not None:
        tag = f"profile {profile.name}"
        mem, ncores = profile.ram, profile.cores
        sources.update(memory=tag, cores=tag)
        spec = profile.storage_medium(storage)
        medium = spec.medium
        if spec.read_bandwidth:
            bw = spec.read_bandwidth
            sources["read_bandwidth"] = f"{tag} {spec.medium}"
        if spec.read_iops:
            iops = spec.read_iops
            sources["read_iops"] = f"{tag} {spec.medium}"
    if memory is not None:
        mem, sources["memory"] = parse_bytes(memory, "--memory"), "--memory"
    if read_bandwidth is not None:
        bw, sources["read_bandwidth"] = parse_rate(read_bandwidth, "--read-bandwidth"), "--read-bandwidth"
    if read_iops is not None:
        iops, sources["read_iops"] = parse_count(read_iops, "--read-iops"), "--read-iops"
    if cores is not None:
        ncores, sources["cores"] = parse_count(cores, "--cores"), "--cores"
    if mem is not None:
        try:
            host_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            host_ram = 0
        if host_ram and mem > host_ram:
            notes.append(f"memory: {mem} bytes wanted ({sources['memory']}) but this host has {host_ram}: "
                         "the limit cannot bind")
    if ncores is not None:
        have = host_cores if host_cores is not None else len(os.sched_getaffinity(0))
        if ncores > have:
            notes.append(f"cores: {ncores} wanted ({sources['cores']}) but this host has {have}; using {have}")
            ncores = have
    return RigLimits(memory=mem, read_bandwidth=bw, read_iops=iops, cores=ncores,
                     profile=profile.name if profile else None, storage=medium,
                     sources=tuple(sorted(sources.items())), notes=tuple(notes))
