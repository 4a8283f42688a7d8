"""The composition root: the ``stagemesh`` command and ``python -m mesh``.

This is the only module that wires the ``roles`` and ``registry_bridge`` extensions into the
mesh; the ``mesh`` library itself imports neither. Each command is imported only when it runs
(``stagemesh --help``, ``status`` and ``keygen`` start in tens of milliseconds, not with the
registry's, the roles' and zeroconf's imports): keep imports here inside the loaders.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh._cli import Command, CommandEntry, main as cli_main

if TYPE_CHECKING:
    from mesh._plugins import ExtensionPlugin

__all__ = ["COMMANDS", "commands", "main", "node_extensions"]


def _node() -> Command:
    from mesh._node_cli import NodeCommand

    return NodeCommand(extensions=node_extensions())


def _status() -> Command:
    from mesh._node_cli import StatusCommand

    return StatusCommand()


def _keygen() -> Command:
    from mesh._node_cli import KeygenCommand

    return KeygenCommand(operator_keygen=_write_operator_key)


def _write_operator_key(path: Path, comment: str | None) -> str:
    """``stagemesh keygen --operator``: the roles package's writer, imported only then (it
    loads the cryptography library)."""
    from roles._operator import write_operator_key

    return write_operator_key(path, comment)


def _sim() -> Command:
    from mesh._sim_cli import SimCommand

    return SimCommand()


def _registry() -> Command:
    from registry_bridge._command import RegistryCommand

    return RegistryCommand()


def _roles() -> Command:
    from roles._cli import RolesCommand

    return RolesCommand()


def _demo() -> Command:
    from mesh._demo import DemoCommand

    return DemoCommand()


COMMANDS: tuple[CommandEntry, ...] = (
    CommandEntry("node", "run a stagemesh node", _node),
    CommandEntry(
        "status", "show the view of a running node (default: every node on this machine)", _status
    ),
    CommandEntry(
        "keygen",
        "write a new federation key (pass it to every node with --key-file), add a key to it "
        "or retire one (--add, --retire: rotate the key while nodes run), or with --operator "
        "an operator key pair (sign role changes with it)",
        _keygen,
    ),
    CommandEntry("sim", "run a membership scenario in the deterministic simulator", _sim),
    CommandEntry(
        "registry", "run the HTTP registry that joins orchestras on different networks", _registry
    ),
    CommandEntry(
        "roles",
        "show and change the roles of conference stations (through a node's API)",
        _roles,
    ),
    CommandEntry(
        "demo",
        "run a registry and a federation of nodes on this machine (loopback only) to try",
        _demo,
    ),
)
"""Every ``stagemesh`` subcommand, in the order ``--help`` lists them (each summary is its
command's ``help``; ``tests/test_cli_startup.py`` checks they agree)."""


def commands() -> list[Command]:
    """Every ``stagemesh`` subcommand, loaded (this imports all of them)."""
    return [entry.load() for entry in COMMANDS]


def node_extensions() -> list[ExtensionPlugin[Any]]:
    """The extensions ``stagemesh node`` offers (roles, registry bridge, OSC and Ableton Link
    bridges), each with its flags, typed config and factory; ``--help`` lists their flags in
    this order, after the node's own."""
    from mesh._bridges import LINK, OSC
    from registry_bridge._plugin import REGISTRY
    from roles._plugin import ROLES

    return [ROLES, REGISTRY, OSC, LINK]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stagemesh`` console script."""
    return cli_main(COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
