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
* The registry **arbitrates the conductor** (:class:`RegistryArbiter`): a ``--conductor``
  candidate claims the post only after the registry granted it (a registration with
  ``conductor: true``), so sites that cannot hear each other never both have one.
* The registry being **unreachable** never stops the node: the LAN keeps working, the status
  says ``unreachable`` and the bridge retries with exponential back-off (``interval`` doubling
  up to ``max_backoff``).

Its status (``/api/status`` field ``registry``): ``url``; ``state``: ``connected`` when the
last exchange with the registry succeeded, ``unreachable`` when it failed (``last_error`` says
how; cleared by the next success), ``idle`` while the node has nothing to ask it (it is not
supernode and has live peers; its supernode speaks for it); ``registered_as`` (this node's
path while it is registered, as supernode or conductor candidate), ``registered_supernode``;
``peers`` (the supernode addresses learned) and ``conductor_granted``.

Not done here (needs a NodeCore hook; see docs/registry.md, "The node-side bridge"): supernodes
taking the registry's elapsed time as their clock reference.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Container, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import httpx
import trio

from mesh._election import pick_lease
from mesh._extensions import Extension
from mesh._wire import ClockReply, Lease
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

__all__ = ["BridgeState", "RegistryArbiter", "RegistryBridge", "registry_extension_factory"]

logger = logging.getLogger(__name__)

BridgeState = Literal["connected", "unreachable", "idle"]
"""What :meth:`RegistryBridge.status` reports as ``state``."""


REGISTRY_CLOCK = "registry"
"""The name of the registry's clock as a time source of the node."""
_CLOCK_POLL = 0.05


class RegistryArbiter:
    """The conductor's arbiter when a registry is configured (a :class:`mesh._election.
    ConductorArbiter`): a conductor claim is allowed only once the registry granted this node
    the conductor (its registration with ``conductor: true``), so orchestras on networks that
    cannot hear each other never both have one. While the registry is known to be unreachable
    the local rule applies (the LAN keeps working). Conflicts are decided by the local rule
    (:func:`~mesh._election.pick_lease`), the same on every node.
    """

    def __init__(self, bridge: RegistryBridge) -> None:
        self._bridge = bridge
        self.wanted = False
        """This node asked to claim the conductor and the bridge should ask the registry."""
        self.granted = False
        """The registry records this node as the federation's conductor."""

    def may_claim(self, now: float, claim: Lease) -> bool:
        """Whether this node may claim the conductor now (see the class docstring)."""
        if self.granted or self._bridge.state == "unreachable":
            return True
        self.wanted = True
        self._bridge.wake()
        return False

    def pick(self, a: Lease, b: Lease, valid: Container[str]) -> Lease:
        """:func:`~mesh._election.pick_lease` (the local rule)."""
        return pick_lease(a, b, valid)


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
        self.clock_samples = 0
        """Registry clock samples the node's clock took."""
        self._token: str | None = None
        self._registered_as: str | None = None
        self._version: int | None = None
        self._conductor_granted = False
        self._peers: dict[str, tuple[str, int]] = {}  # node id (or path) -> gossip address
        self._flags: tuple[bool, bool] = (False, False)  # registered (supernode, conductor)
        self._wake = trio.Event()
        self._arbiter = RegistryArbiter(self)

    # -- extension hooks ----------------------------------------------------------------------

    def arbiter(self) -> RegistryArbiter:
        """The registry judges conductor claims: the node takes this when it is built."""
        return self._arbiter

    def status(self) -> Mapping[str, Any]:
        """The bridge's state for ``/api/status`` (see the module docstring)."""
        return {
            "url": self.url,
            "state": self.state,
            "last_error": self.last_error,
            "registered_as": self._registered_as,
            "peers": sorted(f"{h}:{p}" for h, p in self._peers.values()),
            "registered_supernode": self._token is not None and self._flags[0],
            "conductor_granted": self._conductor_granted,
            "clock_samples": self.clock_samples,
        }

    def wake(self) -> None:
        """Run the next round now (the arbiter wants an answer from the registry)."""
        self._wake.set()

    async def run(self, node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the bridge loop until the node stops; unregister on the way out."""
        async with RegistryClient(
            self.url, timeout=self.timeout, transport=self._transport
        ) as client:
            node.use_external_clock(REGISTRY_CLOCK)
            task_status.started()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._serve_clock, node, client)
                    while True:
                        ok = await self._guarded_step(node, client)
                        with trio.move_on_after(self._next_delay(ok)):
                            await self._wake.wait()
                        self._wake = trio.Event()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await self._unregister(client)

    async def _serve_clock(self, node: Node, client: RegistryClient) -> None:
        """Carry the node's clock requests to the registry (only a supernode sends any: the
        rest of its orchestra follows it) and bring back the registry's elapsed time."""
        federation = node.config.federation
        while True:
            await trio.sleep(_CLOCK_POLL)  # the clock core paces its own requests
            for request in node.external_clock_requests():
                try:
                    sample = await client.elapsed(federation)
                except RegistryError as exc:
                    logger.debug("registry clock sample failed: %s", exc)
                    continue
                if sample.epoch is None:
                    continue  # nobody registered yet: the registry has no federation time
                reply = ClockReply(request.probe, request.t1, sample.t2, sample.t3, 0.0, True)
                self.clock_samples += int(node.external_clock_reply(reply, REGISTRY_CLOCK))

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
        """One round of the bridge: look up a supernode when alone; register (again when the
        role changed, or to ask for the conductor) or heartbeat while supernode or conductor
        candidate asking for or holding the post; unregister otherwise; propose the learned
        peers."""
        orchestra = node.config.orchestra
        alone = not _has_live_peer(node)
        conductor = node.conductor
        if conductor is not None and conductor != node.path:
            self._arbiter.wanted = False  # another node conducts
        want_conductor = node.config.conductor and (self._arbiter.wanted or conductor == node.path)
        # Alone, and the registry names another supernode of this orchestra: join it rather
        # than register as a second one (the LAN election decides once merged).
        found_own = alone and await self._lookup(node, client)
        flags = (node.supernode(orchestra) == node.path and not found_own, want_conductor)
        if any(flags):
            retry_claim = want_conductor and not self._conductor_granted
            if self._token is None or flags != self._flags or retry_claim:
                await self._register(node, client, flags)
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

    async def _register(self, node: Node, client: RegistryClient, flags: tuple[bool, bool]) -> None:
        host, port = node.address
        supernode, conductor = flags
        registration = await client.register(
            node.config.federation,
            node.config.orchestra,
            node.config.name,
            port=port,
            host=host,
            node_id=node.id,
            supernode=supernode,
            conductor=conductor,
            create=True,
            takeover=supernode,
        )
        self._connected()
        self._token = registration.token
        self._flags = flags
        self._registered_as = registration.path
        self._version = registration.version
        self._set_granted(registration.conductor_granted)
        if supernode:
            self._replace_peers(node, registration.other_supernodes)
        logger.info(
            "registered %s at %s (supernode %s, conductor %s); %d other supernode(s)",
            registration.path,
            self.url,
            registration.supernode_granted,
            registration.conductor_granted,
            len(registration.other_supernodes),
        )

    async def _heartbeat(self, node: Node, client: RegistryClient) -> None:
        assert self._token is not None
        try:
            beat = await client.heartbeat(self._token)
        except RegistryNotFound:
            logger.info("registration at %s expired; registering again", self.url)
            flags = self._flags
            self._forget_registration()
            await self._register(node, client, flags)
            return
        self._connected()
        if beat.version != self._version and self._flags[0]:
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
        self._flags = (False, False)
        self._set_granted(False)

    def _set_granted(self, granted: bool) -> None:
        self._conductor_granted = granted
        self._arbiter.granted = granted

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
