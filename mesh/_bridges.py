"""``stagemesh node --osc`` and ``--link``: the factories the composition root offers.

They parse the flags and import the bridges (python-osc, Ableton Link) only when a flag asks
for one, so neither ``import mesh`` nor ``stagemesh --help`` loads them.
"""

from __future__ import annotations

import argparse
import ipaddress

from mesh._cli import CommandFailed, UsageError
from mesh._extensions import Extension
from mesh._wire import Address

__all__ = ["link_extension_factory", "osc_extension_factory", "parse_osc_address"]

LINK_MISSING = "--link needs Ableton Link support: pip install 'stagemesh[link]'"


def parse_osc_address(text: str, flag: str = "--osc") -> Address:
    """``PORT`` (on 127.0.0.1) or ``HOST:PORT`` with an IPv4 literal host; raises
    :class:`UsageError` naming *flag*."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise UsageError(f"{flag} {text}: give PORT or HOST:PORT with an IPv4 address") from None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{flag} {text}: the port must be 0..65535")
    return host, int(port)


def osc_extension_factory(args: argparse.Namespace) -> Extension | None:
    """The OSC bridge for ``--osc [HOST:]PORT [--osc-reply HOST:PORT]``, else ``None``."""
    spec = getattr(args, "osc", None)
    reply = getattr(args, "osc_reply", None)
    if spec is None:
        if reply is not None:
            raise UsageError("--osc-reply needs --osc")
        return None
    bind = parse_osc_address(spec)
    reply_to = None if reply is None else parse_osc_address(reply, "--osc-reply")
    if reply_to is not None and reply_to[1] == 0:
        raise UsageError("--osc-reply needs a port")
    from mesh._osc import OscBridge

    try:
        return OscBridge.bind(bind, reply_to)
    except OSError as exc:
        raise CommandFailed(str(exc.strerror)) from None


def link_extension_factory(args: argparse.Namespace) -> Extension | None:
    """The Ableton Link bridge for ``--link``, else ``None``; a usage error naming the extra
    to install when Link support is missing."""
    if not getattr(args, "link", False):
        return None
    try:
        import link  # noqa: F401  (linkpython-extern)
    except ImportError:
        raise UsageError(LINK_MISSING) from None
    from mesh._link import LinkBridge

    return LinkBridge()
