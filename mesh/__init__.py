"""stagemesh's peer-to-peer core: wire format, membership, discovery, election, clock, node.

Public names are re-exported here from private modules (trio's habit), listed once in
``mesh/_api.py`` and imported on first use (PEP 562), so that importing a light submodule such as
``mesh._cli`` does not import trio, zeroconf and every protocol core; ``tests/test_exports.py``
checks the list.
"""

import typing as _typing

if _typing.TYPE_CHECKING:
    from mesh._api import *  # noqa: F403

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """Load the public names on first use; cache the one asked for in this module."""
    if not name.startswith("_"):
        from mesh import _api

        if name in vars(_api) and not name.startswith("_"):
            value = vars(_api)[name]
            globals()[name] = value
            return value
    raise AttributeError(f"module 'mesh' has no attribute {name!r}")


def __dir__() -> list[str]:
    from mesh import _api

    public = [n for n in vars(_api) if not n.startswith("_")]
    return sorted({*globals(), *public})
