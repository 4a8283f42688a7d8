"""The one check for names: federations, orchestras, nodes and roles.

Every edge that accepts a name (the command line, the wire decoder, the registry, the config
loaders) calls :func:`check_name`, so a name valid in one place is valid everywhere.
"""

from __future__ import annotations

import re

from mesh._errors import MeshError

__all__ = ["NAME_MAX_LENGTH", "InvalidName", "check_name", "is_valid_name"]

NAME_MAX_LENGTH = 64
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")


_DOTS = frozenset({".", ".."})
"""Names that are path segments of their own (this folder, the parent): a name becomes a URL
segment (registry pages) and a directory (role outputs), where these two mean something else."""


class InvalidName(MeshError, ValueError):
    """Raised by :func:`check_name` for anything but 1-64 letters, digits, ``-_.``, and for
    ``.`` and ``..``."""


def is_valid_name(value: object) -> bool:
    """Return whether *value* is a valid stagemesh name."""
    return isinstance(value, str) and _NAME_RE.match(value) is not None and value not in _DOTS


def check_name(value: object, what: str = "name") -> str:
    """Return *value* if it is a valid name, else raise :class:`InvalidName` saying why.

    *what* names the field in the message ("orchestra", "role", ...).
    """
    if not isinstance(value, str):
        raise InvalidName(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidName(f"{what} must not be empty")
    if len(value) > NAME_MAX_LENGTH:
        raise InvalidName(f"{what} is {len(value)} characters long; the limit is {NAME_MAX_LENGTH}")
    if _NAME_RE.match(value) is None:
        bad = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c in "._-"))})
        raise InvalidName(
            f"{what} {value!r} may hold only letters, digits, '-', '_' and '.'; "
            f"found {''.join(bad)!r}"
        )
    if value in _DOTS:
        raise InvalidName(
            f"{what} may not be '.' or '..' (they name a folder and its parent in paths and URLs)"
        )
    return value
