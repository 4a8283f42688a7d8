"""The node side of the registry: ``stagemesh node --registry URL``.

:class:`RegistryBridge` is a :class:`mesh.Extension` (named ``registry``) that runs beside a
node and joins orchestras whose broadcasts and mDNS cannot reach each other:

* While this node is its orchestra's **supernode** (the LAN election decides; the registry
  follows with ``takeover``), it registers with the registry (federation, orchestra, name,
  node id, gossip host and port) and heartbeats with the token. From the answer, and whenever
  the registry's ``version`` changes, it learns the other orchestras' supernodes and proposes
  each to the node (:meth:`mesh.Node.add_peer`, source ``registry``), so the memberships merge
  and every node sees every orchestra through gossip. When it stops being supernode (or the
  node stops) it unregisters.
* A node with **no live peer** (alone in its view) asks the registry for its orchestra's
  supernode (else any supernode) and proposes it: a node whose LAN has no broadcast finds its
  supernode through the registry. While the registry names another live supernode for its own
  orchestra, such a node does not register itself (it waits to merge, and the LAN election
  then decides who stays supernode).
* The registry being **unreachable** never stops the node: the LAN keeps working, the status
  says ``unreachable`` and the bridge retries with exponential back-off (``interval`` doubling
  up to ``max_backoff``).

Its status (``/api/status`` field ``registry``): ``url``; ``state``: ``connected`` when the
last exchange with the registry succeeded, ``unreachable`` when it failed (``last_error`` says
how; cleared by the next success), ``idle`` while the node has nothing to ask it (it is not
supernode and has live peers; its supernode speaks for it); ``registered_as`` (this node's
path while it is registered as supernode); ``peers`` (the supernode addresses learned) and
``conductor_granted``.

Not done here (needs NodeCore hooks; see docs/registry.md, "The node-side bridge"): the registry as
the conductor's arbiter, and supernodes taking the registry's elapsed time as clock reference.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import httpx
import trio

from mesh._extensions import Extension
from registry_bridge._client import (
    Peer,
    RegistryClient,
    RegistryError,
    RegistryNotFound,
    RegistryRejected,
    RegistryUnreachable,
)

if TYPE_CHECKING:
    from mesh._node import Node

__all__ = ["BridgeState", "RegistryBridge", "registry_extension_factory"]

logger = logging.getLogger(__name__)

BridgeState = Literal["connected", "unreachable", "idle"]
"""What :meth:`RegistryBridge.status` reports as ``state``."""


class RegistryBridge(Extension):
    """Bridges a node to the registry at *url* (see the module docstring).

    *interval* is the period of the loop when all is well; after a failure the wait doubles up
    to *max_backoff*. *timeout* bounds each HTTP request; *transport* lets tests pass an httpx
    transport.
    """

    name = "registry"

    def __init__(
        self,
        url: str,
        *,
        interval: float = 2.0,
        max_backoff: float = 30.0,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self.interval = interval
        self.max_backoff = max_backoff
        self.timeout = timeout
        self._transport = transport
        self.state: BridgeState = "idle"
        self.last_error: str | None = None
        self.failures = 0
        self._token: str | None = None
        self._registered_as: str | None = None
        self._version: int | None = None
        self._conductor_granted = False
        self._peers: dict[str, tuple[str, int]] = {}  # node id (or path) -> gossip address

    # -- extension hooks ----------------------------------------------------------------------

    def status(self) -> Mapping[str, Any]:
        """The bridge's state for ``/api/status`` (see the module docstring)."""
        return {
            "url": self.url,
            "state": self.state,
            "last_error": self.last_error,
            "registered_as": self._registered_as,
            "peers": sorted(f"{h}:{p}" for h, p in self._peers.values()),
            "conductor_granted": self._conductor_granted,
        }

    async def run(self, node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the bridge loop until the node stops; unregister on the way out."""
        async with RegistryClient(
            self.url, timeout=self.timeout, transport=self._transport
        ) as client:
            task_status.started()
            try:
                while True:
                    ok = await self._guarded_step(node, client)
                    await trio.sleep(self._next_delay(ok))
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await self._unregister(client)

    # -- the loop -----------------------------------------------------------------------------

    def _next_delay(self, ok: bool) -> float:
        if ok:
            self.failures = 0
            return self.interval
        self.failures += 1
        return float(min(self.max_backoff, self.interval * 2 ** min(self.failures, 16)))

    async def _guarded_step(self, node: Node, client: RegistryClient) -> bool:
        """One round; ``False`` (and the error recorded) if the registry failed us."""
        try:
            await self.step(node, client)
        except RegistryUnreachable as exc:
            if self.state != "unreachable":
                logger.warning("registry %s unreachable: %s", self.url, exc)
            self.state = "unreachable"
            self.last_error = str(exc)
            return False
        except RegistryRejected as exc:
            logger.warning("registry %s refused: %s", self.url, exc)
            self.state = "connected"
            self.last_error = str(exc)
            return False
        return True

    async def step(self, node: Node, client: RegistryClient) -> None:
        """One round of the bridge: look up a supernode when alone, register or heartbeat as
        supernode, unregister when no longer supernode, and propose the learned peers."""
        orchestra = node.config.orchestra
        alone = not _has_live_peer(node)
        if alone and await self._lookup(node, client):
            self._propose(node)
            return
        if node.supernode(orchestra) == node.path:
            if self._token is None:
                await self._register(node, client)
            else:
                await self._heartbeat(node, client)
        elif self._token is not None:
            await self._unregister(client)
        elif not alone:
            self.state = "idle"  # nothing to ask the registry (its supernode does)
            self.last_error = None
        self._propose(node)

    async def _lookup(self, node: Node, client: RegistryClient) -> bool:
        """Learn supernodes from the registry; ``True`` if another live node is registered as
        this node's orchestra's supernode."""
        try:
            view = await client.federation(node.config.federation)
        except RegistryNotFound:
            self._connected()
            return False
        self._connected()
        supernodes = [p for p in _supernodes(view) if p.node_id != node.id]
        own = [p for p in supernodes if p.orchestra == node.config.orchestra]
        for peer in own or supernodes:
            self._learn(peer)
        return bool(own)

    async def _register(self, node: Node, client: RegistryClient) -> None:
        host, port = node.address
        registration = await client.register(
            node.config.federation,
            node.config.orchestra,
            node.config.name,
            port=port,
            host=host,
            node_id=node.id,
            supernode=True,
            conductor=node.conductor == node.path,
            create=True,
            takeover=True,
        )
        self._connected()
        self._token = registration.token
        self._registered_as = registration.path
        self._version = registration.version
        self._conductor_granted = registration.conductor_granted
        self._replace_peers(node, registration.other_supernodes)
        logger.info(
            "registered %s as supernode at %s; %d other supernode(s)",
            registration.path,
            self.url,
            len(registration.other_supernodes),
        )

    async def _heartbeat(self, node: Node, client: RegistryClient) -> None:
        assert self._token is not None
        try:
            beat = await client.heartbeat(self._token)
        except RegistryNotFound:
            logger.info("registration at %s expired; registering again", self.url)
            self._forget_registration()
            await self._register(node, client)
            return
        self._connected()
        if beat.version != self._version:
            view = await client.federation(node.config.federation)
            self._version = beat.version
            self._replace_peers(node, _supernodes(view))

    async def _unregister(self, client: RegistryClient) -> None:
        token = self._token
        if token is None:
            return
        self._forget_registration()
        try:
            await client.unregister(token)
        except RegistryNotFound:
            pass
        except RegistryError as exc:  # it will expire by itself
            logger.info("could not unregister from %s: %s", self.url, exc)
            return
        self._connected()

    # -- helpers ------------------------------------------------------------------------------

    def _connected(self) -> None:
        self.state = "connected"
        self.last_error = None

    def _forget_registration(self) -> None:
        self._token = None
        self._registered_as = None
        self._version = None
        self._conductor_granted = False

    def _replace_peers(self, node: Node, peers: Iterable[Peer]) -> None:
        self._peers.clear()
        for peer in peers:
            if peer.node_id != node.id and peer.orchestra != node.config.orchestra:
                self._learn(peer)

    def _learn(self, peer: Peer) -> None:
        self._peers[peer.node_id or peer.path] = (peer.host, peer.port)

    def _propose(self, node: Node) -> None:
        """Offer every learned supernode to the node (a no-op for ones it knows alive)."""
        for address in self._peers.values():
            if address != tuple(node.address):
                node.add_peer(address, "registry")


def _has_live_peer(node: Node) -> bool:
    return any(view.is_live and view.node_id != node.id for view in node.members())


def _supernodes(view: Mapping[str, Any]) -> list[Peer]:
    """The supernode registrations in a federation view (:meth:`RegistryClient.federation`)."""
    return [
        Peer.from_json(entry)
        for orchestra in view.get("orchestras", ())
        for entry in orchestra.get("nodes", ())
        if entry.get("supernode")
    ]


def registry_extension_factory(args: argparse.Namespace) -> RegistryBridge | None:
    """Build the bridge from ``stagemesh node`` flags: a :class:`RegistryBridge` for
    ``--registry URL``, ``None`` without it."""
    url = getattr(args, "registry", None)
    if not url:
        return None
    if not url.startswith(("http://", "https://")):
        from mesh._cli import UsageError

        raise UsageError(f"--registry {url}: give an http:// or https:// URL")
    return RegistryBridge(url)
