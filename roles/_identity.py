"""Station identity: host name, MAC address and IP addresses, read without external commands.

EventStreamr read these with ``ifdata``/``hostname``; here the standard library and ``ifaddr``
do it: the host name from :func:`socket.gethostname`, MAC addresses from
``/sys/class/net/*/address`` on Linux (falling back to :func:`uuid.getnode`), IP addresses from
:func:`ifaddr.get_adapters`. The result is small enough to ride in gossip metadata
(:meth:`StationIdentity.to_meta`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import uuid as uuid_module
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import ifaddr

__all__ = ["META_LIMIT", "StationIdentity", "read_identity"]

#: Upper bound on the JSON size of :meth:`StationIdentity.to_meta`, in bytes.
META_LIMIT = 200
_MAX_ADDRESSES = 4
_SYS_NET = "/sys/class/net"


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class StationIdentity:
    """Who a station is, for its member record: ``hostname``, primary ``mac`` (``None`` when
    unknown, formatted ``aa:bb:cc:dd:ee:ff``) and up to four IP ``addresses`` (non-loopback
    IPv4 first, then global IPv6, loopback only if there is nothing else)."""

    hostname: str
    mac: str | None
    addresses: tuple[str, ...] = attrs.field(converter=_str_tuple)

    def to_meta(self, limit: int = META_LIMIT) -> dict[str, Any]:
        """Return a compact dict (``h``, ``m``, ``a``) whose JSON is at most *limit* bytes.

        The host name is cut to 64 characters and addresses are dropped from the end until the
        dict fits.
        """
        meta: dict[str, Any] = {"h": self.hostname[:64], "m": self.mac, "a": list(self.addresses)}
        while len(_json(meta)) > limit and meta["a"]:
            meta["a"].pop()
        return meta

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> StationIdentity:
        """Decode :meth:`to_meta`'s form (untrusted input: wrong fields become empty)."""
        hostname = meta.get("h")
        mac = meta.get("m")
        addresses = meta.get("a")
        return cls(
            hostname=hostname if isinstance(hostname, str) else "",
            mac=mac if isinstance(mac, str) else None,
            addresses=tuple(a for a in addresses if isinstance(a, str))[:_MAX_ADDRESSES]
            if isinstance(addresses, list)
            else (),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the readable form for the status API."""
        return {"hostname": self.hostname, "mac": self.mac, "addresses": list(self.addresses)}


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _format_mac(value: int) -> str:
    return ":".join(f"{(value >> shift) & 0xFF:02x}" for shift in range(40, -8, -8))


def _sys_macs() -> list[tuple[str, str]]:
    """Return (interface, mac) for real interfaces from sysfs, the ones that are up first."""
    try:
        names = sorted(os.listdir(_SYS_NET))
    except OSError:
        return []
    found: list[tuple[int, str, str]] = []
    for name in names:
        if name == "lo":
            continue
        try:
            with open(os.path.join(_SYS_NET, name, "address"), encoding="ascii") as f:
                mac = f.read().strip().lower()
        except (OSError, UnicodeDecodeError):
            continue
        if len(mac) != 17 or mac == "00:00:00:00:00:00":
            continue
        try:
            with open(os.path.join(_SYS_NET, name, "operstate"), encoding="ascii") as f:
                up = f.read().strip() == "up"
        except (OSError, UnicodeDecodeError):
            up = False
        # Physical devices (with a "device" link) before virtual ones (bridges, veth, docker).
        physical = os.path.exists(os.path.join(_SYS_NET, name, "device"))
        found.append((0 if up and physical else 1 if physical else 2, name, mac))
    found.sort()
    return [(name, mac) for _, name, mac in found]


def _addresses() -> list[str]:
    v4: list[str] = []
    v6: list[str] = []
    loopback: list[str] = []
    try:
        adapters = ifaddr.get_adapters()
    except OSError:
        adapters = []
    for adapter in adapters:
        for ip in adapter.ips:
            raw = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                addr = ipaddress.ip_address(raw)
            except ValueError:
                continue
            text = str(addr)
            if addr.is_loopback:
                loopback.append(text)
            elif addr.is_link_local or addr.is_multicast or addr.is_unspecified:
                continue
            elif addr.version == 4:
                v4.append(text)
            else:
                v6.append(text)
    ordered = list(dict.fromkeys(v4 + v6)) or list(dict.fromkeys(loopback))
    return ordered[:_MAX_ADDRESSES]


def read_identity() -> StationIdentity:
    """Read this machine's :class:`StationIdentity` from the OS (no external commands).

    Blocking but quick (a few small file reads); call it once at start.
    """
    macs = _sys_macs()
    if macs:
        mac: str | None = macs[0][1]
    else:
        node = uuid_module.getnode()
        # Bit 40 set means getnode() made up a random number: no real MAC found.
        mac = None if node >> 40 & 1 else _format_mac(node)
    return StationIdentity(hostname=socket.gethostname(), mac=mac, addresses=tuple(_addresses()))
