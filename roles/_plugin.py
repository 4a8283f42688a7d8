"""``stagemesh node --roles FILE``: the roles extension as an
:class:`~mesh._plugins.ExtensionPlugin` (its flags, its typed config, its factory).

Light: it imports the extension (trio, the supervisor, the operator keys' cryptography) only to
build it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from mesh._node import NodeConfig
    from roles._extension import RolesExtension

__all__ = ["ROLES", "RolesConfig", "RolesPlugin"]


@attrs.frozen
class RolesConfig:
    """What a node's roles extension is built from, beside the node's own config (its
    identity, state folder and ``conductor``)."""

    station_file: Path | None = None
    """The station's roles file: with it the node is a station (``--roles``)."""
    operator_keys: tuple[Path, ...] = ()
    """Files of operator public keys whose signed role changes the station accepts."""
    insecure_remote_roles: bool = False
    """On an open federation, accept remote role changes anyway (unsigned without keys)."""


class RolesPlugin:
    """``--roles FILE``, ``--operator-keys FILE`` (repeatable), ``--insecure-remote-roles``."""

    name = "roles"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the roles extension's flags."""
        group = parser.add_argument_group("conference station roles")
        add = group.add_argument
        add("--roles", type=Path, default=None, help="station roles file (conference)")
        add(
            "--operator-keys",
            type=Path,
            action="append",
            default=[],
            help="operator public keys (stagemesh keygen --operator) whose signed role changes "
            "this node accepts; repeatable",
        )
        add(
            "--insecure-remote-roles",
            action="store_true",
            help="on an OPEN federation (no --key-file), accept remote role changes anyway "
            "(unsigned if no --operator-keys): only on an isolated network you control",
        )

    def config(self, args: argparse.Namespace) -> RolesConfig:
        """The :class:`RolesConfig` of the flags (the files are read by the factory)."""
        return RolesConfig(args.roles, tuple(args.operator_keys), args.insecure_remote_roles)

    def build(self, config: RolesConfig, node: NodeConfig) -> RolesExtension | None:
        """See :func:`roles._extension.roles_extension_factory` (``None`` for a node that is
        neither a station nor a conductor candidate, without importing the extension: most
        nodes start faster for it)."""
        if config.station_file is None and not node.conductor and not config.operator_keys:
            return None
        from roles._extension import roles_extension_factory

        return roles_extension_factory(config, node)


ROLES = RolesPlugin()
"""The roles extension's plugin, as the composition root offers it."""
