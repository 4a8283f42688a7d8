"""Which interfaces and addresses discovery uses: one pure rule, decided from the bind address.

* Bound to a loopback address (``127.x.y.z``): loopback only. Beacons go to
  ``127.255.255.255``, mDNS runs on ``127.0.0.1``; nothing is sent on any other interface.
* Bound to a specific other address: the interface holding that address, only.
* Bound to ``0.0.0.0``: the interfaces named with ``--interface`` if any, otherwise all of them
  (loopback included, so nodes on one host find each other too).

:func:`choose_interfaces` is pure (it is given the host's addresses); :func:`local_addresses`
reads them from the operating system with ``ifaddr``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

import attrs
import ifaddr

from mesh._errors import MeshError

__all__ = [
    "LOOPBACK_BROADCAST",
    "DiscoveryInterfaces",
    "InterfaceAddress",
    "InterfaceError",
    "LocalAddress",
    "choose_interfaces",
    "local_addresses",
]

LOOPBACK_BROADCAST = "127.255.255.255"
_LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")
_WILDCARD = "0.0.0.0"


class InterfaceError(MeshError, ValueError):
    """Raised by :func:`choose_interfaces` when the bind address or an ``--interface`` name
    cannot be used: not an IPv4 address, not an address of this host, an unknown interface, an
    interface without IPv4, or a non-loopback interface asked for by a node bound to loopback.
    The message alone explains the problem (it is shown as a usage error)."""


@attrs.frozen
class LocalAddress:
    """One IPv4 address of this host: interface name, address, prefix length."""

    interface: str
    address: str
    prefix: int


@attrs.frozen
class InterfaceAddress:
    """One address discovery runs on.

    ``broadcast`` is where beacons go from this address (``None`` for /31 and /32 networks,
    which have no broadcast address); ``network`` is where peers heard through it may live.
    """

    interface: str
    address: str
    network: ipaddress.IPv4Network
    broadcast: str | None

    @property
    def loopback(self) -> bool:
        """Whether this is a loopback address."""
        return ipaddress.IPv4Address(self.address) in _LOOPBACK_NET


@attrs.frozen
class DiscoveryInterfaces:
    """The outcome of :func:`choose_interfaces`: the addresses discovery uses."""

    addresses: tuple[InterfaceAddress, ...]

    @property
    def loopback_only(self) -> bool:
        """Whether discovery stays on loopback (the node was bound to a loopback address)."""
        return all(a.loopback for a in self.addresses)

    @property
    def broadcast_targets(self) -> tuple[tuple[str, str], ...]:
        """``(source address, broadcast address)`` pairs that beacons are sent to."""
        seen: dict[tuple[str, str], None] = {}
        for a in self.addresses:
            if a.broadcast is not None:
                seen[(a.address, a.broadcast)] = None
        return tuple(seen)

    @property
    def mdns_interfaces(self) -> list[str]:
        """The ``interfaces=`` list for ``zeroconf.Zeroconf`` (loopback is ``127.0.0.1``)."""
        out: dict[str, None] = {}
        for a in self.addresses:
            out["127.0.0.1" if a.loopback else a.address] = None
        return list(out)

    @property
    def announced_addresses(self) -> list[str]:
        """The addresses put into this node's mDNS records: its non-loopback addresses, or
        its loopback address when it has nothing else (a loopback address told to another host
        would point that host at itself)."""
        outside = [a.address for a in self.addresses if not a.loopback]
        if outside:
            return list(dict.fromkeys(outside))
        return list(dict.fromkeys(a.address for a in self.addresses))

    def accepts(self, address: str) -> bool:
        """Whether a peer at *address* is reachable through these interfaces (a peer heard of
        elsewhere, say a LAN beacon reaching a loopback-only node, is not hinted)."""
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return False
        return any(ip in a.network for a in self.addresses)


def _entry(local: LocalAddress) -> InterfaceAddress:
    ip = ipaddress.IPv4Address(local.address)
    if ip in _LOOPBACK_NET:
        return InterfaceAddress(local.interface, local.address, _LOOPBACK_NET, LOOPBACK_BROADCAST)
    network = ipaddress.IPv4Network(f"{local.address}/{local.prefix}", strict=False)
    broadcast = str(network.broadcast_address) if network.prefixlen <= 30 else None
    return InterfaceAddress(local.interface, local.address, network, broadcast)


def choose_interfaces(
    bind: str, names: Sequence[str], local: Iterable[LocalAddress]
) -> DiscoveryInterfaces:
    """Decide where discovery runs, from the bind address and the ``--interface`` names.

    *local* lists this host's IPv4 addresses (see :func:`local_addresses`). Raises
    :class:`InterfaceError` when the choice is impossible.
    """
    try:
        bind_ip = ipaddress.IPv4Address(bind)
    except ValueError:
        raise InterfaceError(f"bind address {bind!r} is not an IPv4 address") from None
    local = list(local)
    by_name: dict[str, list[LocalAddress]] = {}
    for entry in local:
        by_name.setdefault(entry.interface, []).append(entry)
    for name in names:
        if name not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            raise InterfaceError(
                f"no interface named {name!r} with an IPv4 address (interfaces: {known})"
            )

    if bind_ip in _LOOPBACK_NET:
        wrong = [n for n in names if not all(_entry(e).loopback for e in by_name[n])]
        if wrong:
            raise InterfaceError(
                f"bound to loopback address {bind}, so discovery stays on loopback; "
                f"--interface {wrong[0]} is not a loopback interface (bind to 0.0.0.0 or to "
                f"its address instead)"
            )
        lo = next((e.interface for e in local if _entry(e).loopback), "lo")
        return DiscoveryInterfaces((InterfaceAddress(lo, bind, _LOOPBACK_NET, LOOPBACK_BROADCAST),))

    if bind != _WILDCARD and str(bind_ip) != _WILDCARD:
        holders = [e for e in local if e.address == str(bind_ip)]
        if not holders:
            mine = ", ".join(f"{e.address} ({e.interface})" for e in local) or "none"
            raise InterfaceError(
                f"bind address {bind} is not an address of this host (its addresses: {mine}; "
                f"0.0.0.0 binds them all)"
            )
        if names and holders[0].interface not in names:
            raise InterfaceError(
                f"bind address {bind} is on interface {holders[0].interface}, "
                f"which --interface does not name"
            )
        return DiscoveryInterfaces((_entry(holders[0]),))

    chosen = [e for e in local if not names or e.interface in names]
    if not chosen:
        raise InterfaceError("this host has no IPv4 address to run discovery on")
    return DiscoveryInterfaces(tuple(_entry(e) for e in chosen))


def local_addresses() -> list[LocalAddress]:
    """This host's IPv4 addresses, read with ``ifaddr`` (no external commands)."""
    return [
        LocalAddress(adapter.name, ip.ip, ip.network_prefix)
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str)
    ]
