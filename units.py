"""Byte sizes: parse "512MiB"-style options and format byte counts for people (shared by API and CLI)."""
from __future__ import annotations

import re

from .errors import OptionError

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "tb": 10**12}


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def parse_bytes(text: str | int, option: str) -> int:
    """'512MiB' / '1GiB' / '256KiB' / '90MB' / '4096' -> bytes; bad values raise OptionError naming ``option``."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise OptionError(f"{option}: cannot parse {text!r} as a size (examples: 512MiB, 1GiB, 256KiB, 90MB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
