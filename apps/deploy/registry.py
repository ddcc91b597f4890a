"""The device registry: named boards reachable over ssh, stored in ``$EDGESPOOL_CONFIG_DIR/devices.json`` (default
``$XDG_CONFIG_HOME/edgespool``, else ``~/.config/edgespool``). Host keys live next to it in ``known_hosts`` (never
the user's own file, so a board added here is trusted only by edgespool). No password or key material is stored:
only the path of an identity file, if one was named."""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ...errors import DeployError, OptionError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def config_dir() -> Path:
    """Where edgespool keeps its user configuration (created on first write)."""
    env = os.environ.get("EDGESPOOL_CONFIG_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "edgespool"


@dataclass(frozen=True)
class Device:
    """One board: how to reach it and where edgespool lives on it."""

    name: str
    user: str
    host: str
    port: int = 22
    identity: str | None = None  # path of a private key file (its contents are never read by edgespool)
    root: str = "~/edgespool"  # device root on the board: every remote path stays under it
    python: str = "python3"

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@{self.host}" + (f":{self.port}" if self.port != 22 else "")

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def parse_url(url: str) -> tuple[str, str, int]:
    """``ssh://user@host[:port]`` -> (user, host, port); anything else is an OptionError naming the URL."""
    u = urlsplit(url)
    if u.scheme != "ssh" or not u.hostname or not u.username:
        raise OptionError(f"device URL {url!r}: expected ssh://user@host[:port]")
    if u.password is not None:
        raise OptionError(f"device URL {url.split('@')[-1]!r}: passwords are not accepted; use a key or ssh-agent")
    if u.path not in ("", "/"):
        raise OptionError(f"device URL {url!r}: no path allowed (use --root for the device root)")
    try:
        port = u.port or 22
    except ValueError:
        raise OptionError(f"device URL {url!r}: bad port") from None
    if not re.fullmatch(r"[A-Za-z0-9._-]+", u.username) or not re.fullmatch(r"[A-Za-z0-9.:_-]+", u.hostname):
        raise OptionError(f"device URL {url!r}: user or host has characters ssh would misread")
    return u.username, u.hostname, port


class Registry:
    """Load, change and save the devices file (written atomically, mode 0600)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or config_dir()
        self.path = self.dir / "devices.json"
        self.known_hosts = self.dir / "known_hosts"

    def load(self) -> dict[str, Device]:
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return {n: Device(**d) for n, d in raw.get("devices", {}).items()}
        except (ValueError, TypeError) as e:
            raise DeployError(f"{self.path}: device registry is unreadable ({e}); fix or remove it") from None

    def save(self, devices: dict[str, Device]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        data = json.dumps({"devices": {n: asdict(d) for n, d in sorted(devices.items())}}, indent=1)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
        os.replace(tmp, self.path)

    def get(self, name: str) -> Device:
        devs = self.load()
        if name not in devs:
            known = ", ".join(sorted(devs)) or "none"
            raise OptionError(f"no device named {name!r} (known: {known}); add it with `edgespool device add`")
        return devs[name]

    def add(self, dev: Device) -> None:
        if not _NAME.match(dev.name):
            raise OptionError(f"device name {dev.name!r}: use letters, digits, '.', '_' or '-'")
        devs = self.load()
        devs[dev.name] = dev
        self.save(devs)

    def remove(self, name: str) -> Device:
        devs = self.load()
        dev = self.get(name)
        del devs[name]
        self.save(devs)
        return dev
