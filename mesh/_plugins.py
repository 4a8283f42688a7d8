"""How an extension plugs into ``stagemesh node``: its own flags, a typed config built from
them in one place, and a factory that builds the :class:`~mesh._extensions.Extension`.

The composition root (``mesh.__main__``) gives :class:`~mesh._node_cli.NodeCommand` one
:class:`ExtensionPlugin` per extension. The command adds the node's flags, then each plugin's
(:meth:`ExtensionPlugin.configure`); after parsing it builds the node's
:class:`~mesh._node.NodeConfig`, asks each plugin for its typed config
(:meth:`ExtensionPlugin.config`) and hands it, with the node's config, to
:meth:`ExtensionPlugin.build`, which returns the extension or ``None`` when the flags do not ask
for it. So the ``mesh`` library defines no flag of an extension, and a factory never sees an
``argparse.Namespace``: a program that embeds a node calls the same factory with a config it
builds itself.

A plugin lives in a light module of its package: ``configure`` and ``config`` import nothing
heavy (``stagemesh node --help`` and a usage error stay quick); ``build`` imports the
extension's own modules. This module imports nothing heavy either.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from mesh._extensions import Extension
    from mesh._node import NodeConfig

__all__ = ["ConfigT", "ExtensionPlugin"]

ConfigT = TypeVar("ConfigT")
"""The typed config of one extension (an attrs frozen class)."""


class ExtensionPlugin(Protocol[ConfigT]):
    """An extension as ``stagemesh node`` offers it: its flags, its config, its factory."""

    name: str
    """The extension's name (:attr:`mesh.Extension.name`)."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add this extension's flags to the ``stagemesh node`` parser (in an argument group
        of its own, so ``--help`` shows whose they are). Imports nothing heavy."""

    def config(self, args: argparse.Namespace) -> ConfigT:
        """The typed config the parsed flags describe: the one place that reads this
        extension's flags. Raises :class:`mesh._cli.UsageError` naming a flag that is wrong."""

    def build(self, config: ConfigT, node: NodeConfig) -> Extension | None:
        """The extension for *config* on the node *node* describes, or ``None`` when *config*
        does not ask for it. Raises :class:`mesh._cli.UsageError` for a config that cannot work
        (a bad file it names) and :class:`mesh._cli.CommandFailed` for a resource it cannot
        take (a port)."""
