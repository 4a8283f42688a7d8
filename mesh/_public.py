"""Show a package as the home of the classes and functions it exports.

Public names live in private modules (``mesh._node``, ``roles._station``...) and are re-exported
by the package. Like trio and httpx, each package then rewrites ``__module__`` of what it
exports, so reprs, tracebacks and ``help()`` say ``mesh.RemoteError`` rather than
``mesh._node.RemoteError``: the name a user imports and the only one that stays stable.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping

__all__ = ["claim_public_names"]


def claim_public_names(package: str, namespace: Mapping[str, object], names: Iterable[str]) -> None:
    """Set ``__module__`` to *package* on the classes and functions among *names* in
    *namespace* that a private module of *package* defines (constants and aliases are left
    alone: they have no module of their own)."""
    for name in names:
        value = namespace[name]
        if isinstance(value, type | types.FunctionType) and value.__module__.startswith(
            package + "._"
        ):
            value.__module__ = package
