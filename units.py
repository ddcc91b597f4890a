"""Units, in one place: parse sizes, rates and counts given by people; format bytes and rates for people; read
this process's peak resident set; tell whether a process is alive (owners of stale locks and staging folders).
Every size option of the CLI, the API and the rig goes through these."""
from __future__ import annotations

import os
import re
import resource

from .errors import OptionError

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "ki": 1 << 10, "kib": 1 << 10, "mi": 1 << 20, "mib": 1 << 20, "gi": 1 << 30, "gib": 1 << 30,
    "ti": 1 << 40, "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int, option: str = "size") -> int:
    """``"512MiB"`` / ``"1.5GB"`` / ``"300M"`` / ``"4096"`` / ``4096`` -> bytes (binary units KiB/MiB/GiB/TiB, SI
    units kB/MB/GB/TB). The size must be positive. Bad input raises OptionError naming ``option``."""
    if isinstance(text, bool):
        raise OptionError(f"{option}: expected a size, got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(str(text))
        unit = m.group(2).lower() if m else ""
        if not m or unit not in _UNITS:
            raise OptionError(f"{option}: cannot parse {text!r} as a size; use e.g. 512MiB, 2GiB, 300MB or a byte "
                              "count")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise OptionError(f"{option}: size must be positive, got {text!r}")
    return value


def parse_rate(text: str, option: str = "bandwidth") -> int:
    """``"90MB/s"`` -> 90000000 bytes/s (``/s`` optional; ``MBps`` accepted). Raises OptionError naming ``option``."""
    s = str(text).strip()
    if s.lower().endswith("/s"):
        s = s[:-2]
    elif s.lower().endswith("ps") and len(s) > 2 and s[-3].isalpha():  # "MBps"
        s = s[:-2]
    return parse_bytes(s, option)


def parse_count(text: str | int, option: str) -> int:
    """A positive integer option (``--cores 2``, ``--read-iops 2500``)."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise OptionError(f"{option}: expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise OptionError(f"{option}: expected a positive integer, got {text!r}")
    return value


def fmt_bytes(n: int | float | None) -> str:
    """Binary size for people: 1536 -> ``1.5 KiB``, 344.4 MiB, ``-`` for None."""
    if n is None:
        return "-"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def fmt_rate(n: int | float | None) -> str:
    """SI bandwidth for people (``90 MB/s``, the unit storage vendors quote); ``-`` for None."""
    if n is None:
        return "-"
    for unit, div in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n:.0f} B/s"


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far: VmHWM from /proc/self/status (reset by exec, unlike
    getrusage's ru_maxrss, which a child started by fork+exec inherits from its parent); getrusage elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0; a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
