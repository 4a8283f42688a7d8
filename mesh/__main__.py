"""The composition root: the ``stagemesh`` command and ``python -m mesh``.

This is the only module that wires the ``roles`` and ``registry_bridge`` extensions into the
mesh; the ``mesh`` library itself imports neither.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mesh._cli import Command, main as cli_main
from mesh._node_cli import ExtensionFactory

__all__ = ["commands", "main"]


def commands() -> list[Command]:
    """Every ``stagemesh`` subcommand, in the order ``--help`` lists them."""
    from mesh._node_cli import KeygenCommand, NodeCommand, StatusCommand
    from mesh._sim_cli import SimCommand
    from registry_bridge._command import RegistryCommand
    from roles._cli import RolesCommand

    found: list[Command] = [
        NodeCommand(extensions=node_extensions()),
        StatusCommand(),
        KeygenCommand(),
        SimCommand(),
        RegistryCommand(),
        RolesCommand(),
    ]
    return found


def node_extensions() -> list[ExtensionFactory]:
    """The extension factories ``stagemesh node`` offers (roles, registry bridge, OSC and
    Ableton Link bridges)."""
    from mesh._bridges import link_extension_factory, osc_extension_factory
    from registry_bridge._bridge import registry_extension_factory
    from roles._extension import roles_extension_factory

    return [
        roles_extension_factory,
        registry_extension_factory,
        osc_extension_factory,
        link_extension_factory,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stagemesh`` console script."""
    return cli_main(commands(), argv)


if __name__ == "__main__":
    sys.exit(main())
