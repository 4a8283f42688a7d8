"""Show a package as the home of the classes and functions it exports.

Public names live in private modules (``mesh._node``, ``roles._station``...) and are re-exported
by the package. Like trio and httpx, each package then rewrites ``__module__`` of what it
exports, so reprs, tracebacks and ``help()`` say ``mesh.RemoteError`` rather than
``mesh._node.RemoteError``: the name a user imports and the only one that stays stable.

Each package lists its public names in ``__all__`` and imports them from ``<package>/_api.py``
only on first use (PEP 562, :func:`load_public_name`): importing the package, or a light
module of it such as a plugin or ``mesh._cli``, does not import trio, the HTTP server,
the template engine or the database drivers, so ``stagemesh --help`` starts fast.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Collection, Iterable, Mapping, MutableMapping

__all__ = ["claim_public_names", "load_public_name"]


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


def load_public_name(
    package: str, name: str, names: Collection[str], namespace: MutableMapping[str, object]
) -> object:
    """The public *name* of *package* (one of *names*, its ``__all__``), loaded from
    ``<package>._api`` and cached in the package's *namespace*; the body of each package's
    module ``__getattr__``. :class:`AttributeError` for any other name, as for a plain module."""
    if name not in names:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = vars(importlib.import_module(f"{package}._api"))[name]
    namespace[name] = value
    return value
