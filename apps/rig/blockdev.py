"""Find the block device (``major:minor`` of the whole disk) that backs a path, for blkio/io throttles.

``stat(path).st_dev`` names the filesystem's device; a partition (``/sys/dev/block/M:m/partition`` exists) maps to
its parent disk, because throttles apply to whole disks (``vda1`` -> ``vda``). Filesystems without a block device of
their own (btrfs subvolumes, overlayfs on a disk) are looked up in ``/proc/self/mountinfo``; tmpfs/proc have none.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_SYS_BLOCK = Path("/sys/dev/block")


@dataclass(frozen=True)
class BlockDevice:
    """A whole disk: ``major:minor`` as cgroups want it, and its kernel name (``vda``, ``nvme0n1``)."""

    major: int
    minor: int
    name: str

    @property
    def majmin(self) -> str:
        """``"254:0"``: the key cgroup throttle files use."""
        return f"{self.major}:{self.minor}"

    def __str__(self) -> str:
        return f"{self.majmin} ({self.name})"


def _disk_of(major: int, minor: int) -> BlockDevice | None:
    node = _SYS_BLOCK / f"{major}:{minor}"
    if not node.exists():
        return None
    real = node.resolve()
    if (real / "partition").exists():  # a partition: the parent directory is the disk
        real = real.parent
    try:
        maj, mnr = (int(x) for x in (real / "dev").read_text().split(":"))
    except (OSError, ValueError):
        return None
    return BlockDevice(maj, mnr, real.name)


def _mount_source(major: int, minor: int) -> str | None:
    """The mount source (e.g. ``/dev/sda2``) of the filesystem whose st_dev is major:minor, from mountinfo."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[2] == f"{major}:{minor}" and " - " in line:
            post = line.split(" - ", 1)[1].split()
            if len(post) >= 2:
                return post[1]
    return None


def device_for_path(path: str | os.PathLike) -> BlockDevice | None:
    """The whole disk backing ``path`` (a file or directory that exists), or None when no block device backs it
    (tmpfs, procfs, network filesystems)."""
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    disk = _disk_of(major, minor)
    if disk is not None:
        return disk
    src = _mount_source(major, minor)  # btrfs/overlay: anonymous st_dev; follow the mount source if it is a disk
    if src and src.startswith("/dev/") and os.path.exists(src):
        rdev = os.stat(src).st_rdev
        if rdev:
            return _disk_of(os.major(rdev), os.minor(rdev))
    return None


def devices_for_paths(paths: list[str]) -> tuple[list[BlockDevice], list[str]]:
    """Distinct disks backing ``paths`` (in order), and the paths that have no block device."""
    disks: list[BlockDevice] = []
    unbacked: list[str] = []
    for p in paths:
        d = device_for_path(p)
        if d is None:
            unbacked.append(str(p))
        elif d not in disks:
            disks.append(d)
    return disks, unbacked
