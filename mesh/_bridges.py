"""``stagemesh node --osc`` and ``--link``: the OSC and Ableton Link bridges as
:class:`~mesh._plugins.ExtensionPlugin` values (their flags, typed configs and factories).

This module is light: it imports the bridges (python-osc, Ableton Link) only when a config asks
for one, so neither ``import mesh`` nor ``stagemesh node --help`` loads them.
"""

from __future__ import annotations

import argparse
import ipaddress
from typing import TYPE_CHECKING

import attrs

from mesh._cli import CommandFailed, UsageError

if TYPE_CHECKING:
    from mesh._extensions import Extension
    from mesh._node import NodeConfig
    from mesh._wire import Address

__all__ = [
    "LINK",
    "OSC",
    "LinkConfig",
    "LinkPlugin",
    "OscConfig",
    "OscPlugin",
    "link_extension_factory",
    "osc_extension_factory",
    "parse_osc_address",
]

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


def _reply_needs_bind(instance: OscConfig, attribute: object, value: Address | None) -> None:
    if value is not None and instance.bind is None:
        raise ValueError("an OSC reply address needs an OSC bind address")


@attrs.frozen
class OscConfig:
    """The OSC bridge a node runs: none without *bind*."""

    bind: Address | None = None
    """The UDP address the bridge listens on (port 0: any free port)."""
    reply_to: Address | None = attrs.field(default=None, validator=_reply_needs_bind)
    """Where answers go (default: back to each message's sender)."""


def osc_extension_factory(config: OscConfig) -> Extension | None:
    """The OSC bridge *config* asks for (its socket bound now, so a taken port is a
    :class:`CommandFailed` before the node starts), else ``None``."""
    if config.bind is None:
        return None
    from mesh._osc import OscBridge

    try:
        return OscBridge.bind(config.bind, config.reply_to)
    except OSError as exc:
        raise CommandFailed(str(exc.strerror)) from None


class OscPlugin:
    """``--osc [HOST:]PORT`` and ``--osc-reply HOST:PORT``."""

    name = "osc"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the OSC bridge's flags."""
        group = parser.add_argument_group("OSC bridge", "for patches (Max, Pd, SuperCollider)")
        group.add_argument(
            "--osc", default=None, metavar="[HOST:]PORT", help="OSC bridge (on 127.0.0.1)"
        )
        group.add_argument(
            "--osc-reply", default=None, metavar="HOST:PORT", help="where OSC answers go"
        )

    def config(self, args: argparse.Namespace) -> OscConfig:
        """The :class:`OscConfig` of ``--osc`` and ``--osc-reply`` (checked here)."""
        if args.osc is None:
            if args.osc_reply is not None:
                raise UsageError("--osc-reply needs --osc")
            return OscConfig()
        bind = parse_osc_address(args.osc)
        reply_to = None
        if args.osc_reply is not None:
            reply_to = parse_osc_address(args.osc_reply, "--osc-reply")
            if reply_to[1] == 0:
                raise UsageError("--osc-reply needs a port")
        return OscConfig(bind, reply_to)

    def build(self, config: OscConfig, node: NodeConfig) -> Extension | None:
        """See :func:`osc_extension_factory`."""
        return osc_extension_factory(config)


OSC = OscPlugin()
"""The OSC bridge's plugin, as the composition root offers it."""


@attrs.frozen
class LinkConfig:
    """Whether a node aligns the local Ableton Link session."""

    enabled: bool = False


def link_extension_factory(config: LinkConfig) -> Extension | None:
    """The Ableton Link bridge when *config* enables it, else ``None``; a usage error naming
    the extra to install when Link support is missing."""
    if not config.enabled:
        return None
    try:
        import link  # noqa: F401  (linkpython-extern)
    except ImportError:
        raise UsageError(LINK_MISSING) from None
    from mesh._link import LinkBridge

    return LinkBridge()


class LinkPlugin:
    """``--link``."""

    name = "link"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the Link bridge's flag."""
        group = parser.add_argument_group("Ableton Link")
        group.add_argument(
            "--link", action="store_true", help="align the local Ableton Link session"
        )

    def config(self, args: argparse.Namespace) -> LinkConfig:
        """The :class:`LinkConfig` of ``--link``."""
        return LinkConfig(enabled=args.link)

    def build(self, config: LinkConfig, node: NodeConfig) -> Extension | None:
        """See :func:`link_extension_factory`."""
        return link_extension_factory(config)


LINK = LinkPlugin()
"""The Ableton Link bridge's plugin, as the composition root offers it."""
