"""``stagemesh node --registry URL``: the registry bridge as an
:class:`~mesh._plugins.ExtensionPlugin` (its flag, its typed config, its factory).

Light: it imports the bridge (httpx, trio) only to build it.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import attrs

from mesh._cli import UsageError

if TYPE_CHECKING:
    from mesh._node import NodeConfig
    from registry_bridge._bridge import RegistryBridge

__all__ = ["REGISTRY", "RegistryConfig", "RegistryPlugin"]


def _check_url(instance: RegistryConfig, attribute: object, url: str | None) -> None:
    if url is not None and not url.startswith(("http://", "https://")):
        raise ValueError("give an http:// or https:// URL")


@attrs.frozen
class RegistryConfig:
    """The registry a node's bridge talks to: none without *url*."""

    url: str | None = attrs.field(default=None, validator=_check_url)
    """The registry's base URL (``http://`` or ``https://``)."""


class RegistryPlugin:
    """``--registry URL``."""

    name = "registry"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the registry bridge's flag."""
        group = parser.add_argument_group(
            "registry bridge", "joins orchestras on networks that cannot see each other"
        )
        group.add_argument("--registry", default=None, help="registry URL")

    def config(self, args: argparse.Namespace) -> RegistryConfig:
        """The :class:`RegistryConfig` of ``--registry`` (an empty URL is none)."""
        try:
            return RegistryConfig(args.registry or None)
        except ValueError as exc:
            raise UsageError(f"--registry {args.registry}: {exc}") from None

    def build(self, config: RegistryConfig, node: NodeConfig) -> RegistryBridge | None:
        """See :func:`registry_bridge._bridge.registry_extension_factory`."""
        from registry_bridge._bridge import registry_extension_factory

        return registry_extension_factory(config)


REGISTRY = RegistryPlugin()
"""The registry bridge's plugin, as the composition root offers it."""
