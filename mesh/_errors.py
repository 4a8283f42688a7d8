"""The root of every exception the ``mesh`` package raises on purpose.

``except mesh.MeshError`` catches them all; each also keeps the builtin base it had before
(``ValueError`` for bad input, ``RuntimeError``, ``LookupError``), so existing handlers still
work. The tree is drawn in the ``mesh`` package's docstring. The roots of the extension
packages (``roles.RolesError``, ``registry_bridge.RegistryBridgeError``) derive from it too.
"""

from __future__ import annotations

__all__ = ["MeshError"]


class MeshError(Exception):
    """Base class of the errors the ``mesh`` package raises (bad names, seeds, interfaces,
    messages and tempos; a node path in use; failed requests)."""
