"""How a node takes extensions: things to run beside it, fields for its status and metadata,
and handlers for requests.

The roles of a conference station, the registry bridge and the OSC and Ableton Link bridges are
extensions. A program puts the ones it wants in :class:`~mesh._node.NodeConfig`;
``stagemesh node`` builds them through their plugins (:mod:`mesh._plugins`: each brings its own
flags and builds its extension from a typed config), which the composition root
(``mesh.__main__``) offers, so the ``mesh`` library never imports them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from mesh._election import ConductorArbiter
from mesh._wire import Value

if TYPE_CHECKING:
    from mesh._node import Node

__all__ = ["Extension"]


class Extension:
    """Base class of node extensions; override what you need (every hook has a no-op default)."""

    name: str = "extension"
    """The key of this extension's fields in the status document."""

    def meta(self) -> Mapping[str, Value]:
        """Small fields to add to this node's member metadata (gossiped to every node)."""
        return {}

    def status(self) -> Mapping[str, Any]:
        """JSON-able fields for ``/api/status`` under :attr:`name`."""
        return {}

    def arbiter(self) -> ConductorArbiter | None:
        """The knobs of conductor arbitration, if this extension carries the node's conductor
        claims to an arbiter (the registry bridge), else ``None``. The node takes the first one
        offered when it is built, before its first claim: its election then asks (through
        ``Node.external_requests``) instead of claiming by the local rule alone."""
        return None

    def site_profile(self) -> str | None:
        """The timing profile of the site tier (see :mod:`mesh._membership`) if this extension
        joins orchestras on different networks (the registry bridge: ``"wan"``), else ``None``.
        The node takes the first one offered when it is built: each orchestra is then a site,
        its members talk to their own site only, and its supernode to the other sites'
        supernodes with these timings."""
        return None

    def handlers(self) -> Mapping[str, Callable[[str | None, Value], Awaitable[Value]]]:
        """Request handlers by request kind (see :meth:`Node.request`)."""
        return {}

    def local_handlers(self) -> Mapping[str, Callable[[Value], Awaitable[Value]]]:
        """Handlers for requests this node's own operator sends to this node through its
        local API (``POST /api/request`` with the node's secret), by kind. They act with the
        authority of the machine's operator, so they may do what :meth:`handlers` refuses to
        other nodes; for a kind listed here they are used instead of :meth:`handlers`."""
        return {}

    def error_family(self, error_type: str) -> str | None:
        """The family name this extension documents for an error type it raises (so a client
        matching on the family finds every member of it), or ``None`` if not its type."""
        return None

    async def run(self, node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run beside the node until it stops; call ``task_status.started()`` when ready."""
        task_status.started()
