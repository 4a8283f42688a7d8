"""``stagemesh node --registry URL [--registry URL ...]``: the registry bridge as an
:class:`~mesh._plugins.ExtensionPlugin` (its flag, its typed config, its factory).

Light: it imports the bridge (httpx, trio) only to build it.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import attrs

from mesh._cli import UsageError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mesh._node import NodeConfig
    from registry_bridge._bridge import RegistryBridge

__all__ = ["REGISTRY", "RegistryConfig", "RegistryPlugin", "registry_urls"]


def registry_urls(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """The registries ``--registry`` names, in order: the flag may be repeated and each value
    may be a comma-separated list (``STAGEMESH_REGISTRY`` is one); a URL named twice counts
    once, an empty one not at all. :class:`ValueError` for one that is not an http:// or
    https:// URL. The one place that reads the list."""
    if value is None:
        return ()
    urls: list[str] = []
    for item in [value] if isinstance(value, str) else value:
        for url in (u.strip() for u in item.split(",")):
            if not url:
                continue
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url}: give an http:// or https:// URL")
            if url not in urls:
                urls.append(url)
    return tuple(urls)


@attrs.frozen
class RegistryConfig:
    """The registries a node's bridge talks to (the first that answers; none without)."""

    urls: tuple[str, ...] = attrs.field(default=(), converter=registry_urls)
    """The registries' base URLs (``http://`` or ``https://``), in the order the bridge moves
    through them; given as one URL, a comma-separated list or a sequence (see
    :func:`registry_urls`)."""

    @property
    def url(self) -> str | None:
        """The first registry, ``None`` without one."""
        return self.urls[0] if self.urls else None


class RegistryPlugin:
    """``--registry URL``."""

    name = "registry"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the registry bridge's flag."""
        group = parser.add_argument_group(
            "registry bridge", "joins orchestras on networks that cannot see each other"
        )
        group.add_argument(
            "--registry",
            action="append",
            default=None,
            help="registry URL; repeat it (or give a comma-separated list) for registries to"
            " move to when the one in use stops answering",
        )

    def config(self, args: argparse.Namespace) -> RegistryConfig:
        """The :class:`RegistryConfig` of ``--registry`` (an empty URL is none)."""
        try:
            return RegistryConfig(args.registry)
        except ValueError as exc:
            raise UsageError(f"--registry {exc}") from None

    def build(self, config: RegistryConfig, node: NodeConfig) -> RegistryBridge | None:
        """See :func:`registry_bridge._bridge.registry_extension_factory` (``None`` without
        ``--registry``, without importing the bridge and its HTTP client)."""
        if not config.urls:
            return None
        from registry_bridge._bridge import registry_extension_factory

        return registry_extension_factory(config)


REGISTRY = RegistryPlugin()
"""The registry bridge's plugin, as the composition root offers it."""
