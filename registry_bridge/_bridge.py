"""The node side of the registry: ``stagemesh node --registry URL``.

:class:`RegistryBridge` is a :class:`mesh.Extension` (named ``registry``) that runs beside a
node. It decides nothing about the conductor or the clock: the node's cores do, and the bridge
carries their requests to the registry and brings the answers back (a plain driver). It:

* registers the node while it is its orchestra's **supernode** (the LAN election decides; the
  registry follows with ``takeover``) or a ``--conductor`` candidate, heartbeats with the
  token, and learns the other orchestras' supernodes from the answers (and whenever the
  registry's ``version`` changes), proposing each to the node (:meth:`mesh.Node.add_peer`,
  source ``registry``), so the memberships merge and every node sees every orchestra. A node
  that no longer needs a registration (or stops) unregisters;
* lets a node with **no live peer** (alone in its view) ask the registry for its orchestra's
  supernode (else any supernode) and proposes it; while the registry names another live
  supernode for its own orchestra, such a node does not register as supernode itself;
* carries **conductor claims** (:class:`~mesh._election.ClaimRequest`) to the registry's
  compare-and-set (the claimant's registration token, the registry's term as fencing
  token): granted when the registry records this node already or records nobody; refused
  otherwise (a holder the registry records keeps the post until it releases it or its
  registration expires). The answer goes
  back as a :class:`~mesh._election.ClaimAnswer`. A node that no longer holds the post
  releases it;
* carries the node's **clock requests** to ``GET .../elapsed`` (stamped as they leave; the
  answer's arrival is the fourth timestamp), handing the node the registry's own clock
  readings with the epochs it keeps (handovers, with lineage and tag) and its generation of
  the federation, and **epoch offers**
  (:class:`~mesh._nodecore.EpochOffer`: the registry's clock reading at which the node's
  federation time was 0, as the node measured it) to ``POST .../epoch``;
* reports, while supernode, its orchestra's **members** (path, state, posts) with each
  heartbeat (:func:`members_report`), so the registry's pages show every player;
* **moves to the next registry** when it is given several (``--registry`` repeated or a
  comma-separated list, read by :func:`registry_bridge._plugin.registry_urls`) and the one in
  use stops answering: the next round starts at once on the next registry that is not in its
  back-off, so it moves within one heartbeat interval (a registry that refuses connections at
  once; one that hangs after the request ``timeout``), and registers there afresh. Each
  registry that failed is left alone for a back-off doubling with each failure in a row
  (``interval`` up to ``max_backoff``), so a dead one is never hammered. The bridge stays on a
  registry that answers;
* never stops the node when **no registry answers**: it tells the node
  (:meth:`mesh.Node.external_available`: the LAN elects and keeps time by itself), says
  ``unreachable`` in its status and retries each registry after its back-off. It logs when the
  registry's state changes, not every request.

* Sites that cannot reach each other (each behind its own NAT) still gossip: while this node
  is a registered supernode, a :class:`~registry_bridge._relaylink.RelayLink` on its gossip
  port carries its datagrams and TCP exchanges with the other orchestras' supernodes through
  the registry's relay whenever the direct path gets no acks, and moves back to direct UDP as
  soon as direct acks come. Members of an orchestra never relay: they talk to their own site
  (the bridge makes every orchestra a site, :meth:`RegistryBridge.site_profile`: members probe
  and gossip with their own orchestra only, the supernodes with each other on the ``wan``
  timings). After every round it tells the node which other sites' supernodes answer it
  directly (:meth:`mesh.Node.direct_peers`, from the relay's paths): a supernode takes its
  site's time from another site only over such a path, and from the registry otherwise.

Its status (``/api/status`` field ``registry``): ``url`` (the registry in use);
``registries`` (each with ``url``, ``in_use``, ``failures`` in a row and ``retry_in`` seconds
of back-off left); ``switches`` (moves to another registry); ``state``: ``connected`` when the
last exchange with the registry succeeded, ``unreachable`` when it failed (``last_error`` says
how; cleared by the next success), ``idle`` while the node has nothing to ask it;
``registered_as`` (this node's path while it is registered), ``registered_supernode``;
``peers`` (the supernode addresses learned); ``conductor_granted`` (the registry records this
node as the conductor); ``clock_samples`` and ``epoch_offers``; ``relay`` (each other
supernode's path, ``direct`` or ``relay``, datagrams sent each way and the relay's share).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs
import httpx
import trio

from mesh._election import CONDUCTOR, ClaimAnswer, ClaimRequest, ConductorArbiter
from mesh._extensions import Extension
from mesh._nodecore import EpochOffer
from mesh._wire import ClockReply, ClockRequest
from registry_bridge._client import (
    ConductorConflict,
    ConductorState,
    Peer,
    RegistryClient,
    RegistryError,
    RegistryNotFound,
    RegistryRejected,
    RegistryUnreachable,
)
from registry_bridge._members import MAX_MEMBERS
from registry_bridge._relaylink import RelayLink

if TYPE_CHECKING:
    from mesh._node import Node
    from registry_bridge._plugin import RegistryConfig

__all__ = [
    "REGISTRY_CLOCK",
    "BridgeState",
    "RegistryBridge",
    "members_report",
    "registry_extension_factory",
]

logger = logging.getLogger(__name__)

BridgeState = Literal["connected", "unreachable", "idle"]
"""What :meth:`RegistryBridge.status` reports as ``state``."""

REGISTRY_CLOCK = "registry"
"""The name of the registry's clock as the node's external time source."""


class RegistryBridge(Extension):
    """Bridges a node to the registry at *url*, or the first answering of several URLs (see
    the module docstring).

    *interval* is the period of the loop when all is well; after a failure the wait doubles up
    to *max_backoff*. *timeout* bounds each HTTP request; *transport* lets tests pass an httpx
    transport.
    """

    name = "registry"

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        interval: float = 2.0,
        max_backoff: float = 30.0,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("a registry bridge needs at least one registry URL")
        self._registries = [_Registry(u) for u in urls]
        self._active = self._registries[0]
        self.switches = 0
        """Times the bridge moved to another registry because the one in use stopped
        answering."""
        self.interval = interval
        self.max_backoff = max_backoff
        self.timeout = timeout
        self._transport = transport
        self.state: BridgeState = "idle"
        self.last_error: str | None = None
        self.failures = 0
        self.clock_samples = 0
        """Registry clock samples the node's clock took."""
        self.epoch_offers = 0
        """Times the node handed the registry the federation's time and it took it."""
        self._token: str | None = None
        self._registered_as: str | None = None
        self._version: int | None = None
        self._holder: str | None = None  # the registry's conductor (node id), as last seen
        self._peers: dict[str, tuple[str, int]] = {}  # node id (or path) -> gossip address
        self._flags: tuple[bool, bool] = (False, False)  # registered (supernode, conductor)
        self._registering = trio.Lock()
        self._wake = trio.Event()
        self._claims_in_flight = 0
        self._reached: bool | None = None  # what the node was last told
        self._node_id: str | None = None
        self._relay: RelayLink | None = None
        self._direct: set[str] = set()  # other sites' supernodes reached directly (node ids)

    # -- extension hooks ----------------------------------------------------------------------

    def arbiter(self) -> ConductorArbiter:
        """The registry judges conductor claims: the node's election asks it (through this
        bridge) before it claims, and a holder confirms its post every ``renew`` seconds."""
        return ConductorArbiter()

    def site_profile(self) -> str:
        """The registry joins orchestras on different networks: each is a site, and the sites'
        supernodes probe each other with the ``wan`` timings (a 200 ms, lossy path between
        venues kills nobody), while each orchestra's LAN keeps the node's own profile."""
        return "wan"

    @property
    def url(self) -> str:
        """The registry in use."""
        return self._active.url

    @property
    def urls(self) -> list[str]:
        """Every registry the bridge may use, in the order it tries them."""
        return [r.url for r in self._registries]

    def status(self) -> Mapping[str, Any]:
        """The bridge's state for ``/api/status`` (see the module docstring)."""
        now = _now() if any(r.failures for r in self._registries) else 0.0
        return {
            "url": self.url,
            "registries": [
                {
                    "url": r.url,
                    "in_use": r is self._active,
                    "failures": r.failures,
                    "retry_in": max(0.0, round(r.retry_at - now, 3)) if r.failures else 0.0,
                }
                for r in self._registries
            ],
            "switches": self.switches,
            "state": self.state,
            "last_error": self.last_error,
            "registered_as": self._registered_as,
            "peers": sorted(f"{h}:{p}" for h, p in self._peers.values()),
            "registered_supernode": self._token is not None and self._flags[0],
            "conductor_granted": self._holder is not None and self._holder == self._node_id,
            "clock_samples": self.clock_samples,
            "epoch_offers": self.epoch_offers,
            "relay": None if self._relay is None else self._relay.status(),
        }

    async def run(self, node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the bridge until the node stops; unregister on the way out."""
        self._node_id = node.id
        async with contextlib.AsyncExitStack() as stack:
            for registry in self._registries:
                registry.client = await stack.enter_async_context(
                    RegistryClient(registry.url, timeout=self.timeout, transport=self._transport)
                )
            node.use_external_clock(REGISTRY_CLOCK)
            self._relay = RelayLink(self._client())
            task_status.started()
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._relay.run, node.transport)
                    nursery.start_soon(self._serve_requests, node, nursery)
                    while True:
                        ok = await self._guarded_step(node, self._client())
                        self._tell_direct(node)
                        with trio.move_on_after(self._next_delay(ok)):
                            await self._wake.wait()
                        self._wake = trio.Event()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await self._unregister(self._client())

    def _tell_direct(self, node: Node) -> None:
        """Tell the node which other sites' supernodes its gossip reaches directly (it times
        its site by them, else by the registry): one is direct from its first direct ack until
        the relay carries its datagrams, not only while the registry lists it (a registry that
        restarts empty or is reset forgets the sites for a while; their path stays as it was)."""
        if self._relay is None:
            return
        paths = self._relay.paths
        relayed = {peer for peer, route in paths.statistics().routes.items() if route == "relay"}
        confirmed = set(paths.confirmed_direct())
        live = {m.address: m.node_id for m in node.core.membership.members() if m.is_live}
        self._direct |= {i for a, i in live.items() if a in confirmed}
        self._direct -= {i for a, i in live.items() if a in relayed}
        self._direct &= set(live.values())
        node.direct_peers(self._direct)

    def _client(self) -> RegistryClient:
        """The client of the registry in use."""
        client = self._active.client
        assert client is not None, "the bridge is not running"
        return client

    # -- carrying the node's requests ---------------------------------------------------------

    async def _serve_requests(self, node: Node, nursery: trio.Nursery) -> None:
        """Carry what the node asks of the registry in use: clock requests one after the other
        (a pair's second request leaves as soon as the first is answered, on a warm
        connection), claims and epoch offers beside them."""
        while True:
            await node.wait_external()
            for request in node.external_requests():
                client = self._client()
                if isinstance(request, ClockRequest):
                    await self._clock_exchange(node, client, request)
                elif isinstance(request, ClaimRequest):
                    nursery.start_soon(self._carry_claim, node, client, request)
                elif isinstance(request, EpochOffer):
                    nursery.start_soon(self._carry_offer, node, client, request)

    async def _clock_exchange(
        self, node: Node, client: RegistryClient, request: ClockRequest
    ) -> None:
        federation = node.config.federation
        stamped = node.stamp_external(request)  # t1: as it leaves
        try:
            sample = await client.elapsed(federation)
        except RegistryNotFound as exc:
            # The federation is gone (the registry restarted empty): it has no time yet; it
            # gets one, and the node's, when the node registers and offers it.
            logger.debug("no federation at %s: %s", self.url, exc)
            self._connected(node, client)
            self._wake.set()  # register at once (which creates it)
            return
        except RegistryError as exc:
            self._failed(node, exc, client)
            return
        if sample.clock_t2 is None or sample.clock_t3 is None:
            logger.debug("registry %s does not say its clock", self.url)
            return
        # The registry's own clock, with its epoch and lineage: the node works out the rest.
        reply = ClockReply(stamped.probe, stamped.t1, sample.clock_t2, sample.clock_t3, 0.0, True)
        used = node.external_clock_reply(reply, REGISTRY_CLOCK, sample.handovers, sample.generation)
        self.clock_samples += int(used)
        self._connected(node, client)

    async def _carry_claim(self, node: Node, client: RegistryClient, request: ClaimRequest) -> None:
        """The registry's compare-and-set for one conductor claim (or renewal)."""
        self._claims_in_flight += 1
        try:
            await self._claim(node, client, request)
        finally:
            self._claims_in_flight -= 1

    async def _claim(self, node: Node, client: RegistryClient, request: ClaimRequest) -> None:
        federation = node.config.federation
        try:
            await self._ensure_registered(node, client)
            state = await client.conductor(federation)
            granted = state.node_id == node.id
            if not granted and state.holder is None:
                state = await self._compare_and_set(node, client, state, node.path)
                granted = state.node_id == node.id
        except RegistryUnreachable as exc:
            self._failed(node, exc, client)
            return
        except RegistryError as exc:
            logger.warning("registry %s refused a conductor claim: %s", self.url, exc)
            return
        self._connected(node, client)
        self._learn_holder(state)
        node.claim_answer(ClaimAnswer(request.claim, granted, state.node_id, state.term))

    async def _compare_and_set(
        self, node: Node, client: RegistryClient, state: ConductorState, holder: str | None
    ) -> ConductorState:
        """Make *holder* (this node's path, or ``None`` to release) the conductor if the term is
        still the one in *state*; the registry's conductor after the attempt."""
        assert self._token is not None
        try:
            return await client.set_conductor(
                node.config.federation, token=self._token, expected_term=state.term, holder=holder
            )
        except ConductorConflict as exc:
            return exc.current  # another claim got there first

    async def _carry_offer(self, node: Node, client: RegistryClient, offer: EpochOffer) -> None:
        """Hand the registry the federation's time (the epoch the node measured on its clock)."""
        try:
            await self._ensure_registered(node, client)
            assert self._token is not None
            answer = await client.offer_epoch(
                node.config.federation,
                self._token,
                offer.epoch,
                offer.lineage,
                offer.tag,
                offer.generation,
            )
        except RegistryUnreachable as exc:
            self._failed(node, exc, client)
            return
        except RegistryError as exc:
            logger.info("registry %s did not take the federation's time: %s", self.url, exc)
            return
        self._connected(node, client)
        if answer.get("accepted"):
            self.epoch_offers += 1
            logger.info(
                "handed the federation's time to %s (lineage %s, elapsed %.3f s)",
                self.url,
                offer.lineage,
                answer.get("elapsed", 0.0),
            )

    # -- the loop -----------------------------------------------------------------------------

    def _next_delay(self, ok: bool) -> float:
        """Seconds until the next round: the interval after a success; after a failure, until
        the registry in use may be tried again (at once when the bridge just moved to another,
        which also set ``_wake``)."""
        if ok:
            self.failures = 0
            return self.interval
        self.failures += 1
        if self._active.failures:  # unreachable: until its back-off ends
            return max(0.0, self._active.retry_at - _now())
        return self._backoff(self.failures)  # it answered, but refused: back off all the same

    def _backoff(self, failures: int) -> float:
        """Seconds a registry that failed *failures* times in a row is left alone."""
        return float(min(self.max_backoff, self.interval * 2 ** min(failures, 16)))

    async def _guarded_step(self, node: Node, client: RegistryClient) -> bool:
        """One round; ``False`` (and the error recorded) if the registry failed us."""
        try:
            await self.step(node, client)
        except RegistryUnreachable as exc:
            self._failed(node, exc, client)
            return False
        except RegistryRejected as exc:
            logger.warning("registry %s refused: %s", self.url, exc)
            self.state = "connected"
            self.last_error = str(exc)
            return False
        return True

    async def step(self, node: Node, client: RegistryClient) -> None:
        """One round of the bridge: look up a supernode when alone; register (again when the
        role changed) or heartbeat while supernode or conductor candidate; unregister
        otherwise; release the conductor at the registry when the node no longer holds it;
        propose the learned peers."""
        orchestra = node.config.orchestra
        alone = not _has_live_peer(node)
        # Alone, and the registry names another supernode of this orchestra: join it rather
        # than register as a second one (the LAN election decides once merged).
        found_own = alone and await self._lookup(node, client)
        supernode = node.supernode(orchestra) == node.path and not found_own
        holds = node.core.election.holds(CONDUCTOR)
        flags = (supernode, holds and self._holder == node.id)
        if supernode or node.config.conductor:
            async with self._registering:
                if self._token is None or flags != self._flags:
                    await self._register(node, client, flags)
                else:
                    await self._heartbeat(node, client)
        elif self._token is not None:
            await self._unregister(client)
        elif not alone and not node.clock.is_reference:
            self.state = "idle"  # nothing to ask the registry (its supernode does)
            self.last_error = None
        if self._holder == node.id and not node.core.election.holds(CONDUCTOR):
            await self._release(node, client)
        self._propose(node)

    async def _ensure_registered(self, node: Node, client: RegistryClient) -> None:
        async with self._registering:
            if self._token is None:
                supernode = node.supernode(node.config.orchestra) == node.path
                await self._register(node, client, (supernode, False))

    async def _lookup(self, node: Node, client: RegistryClient) -> bool:
        """Learn supernodes from the registry; ``True`` if another live node is registered as
        this node's orchestra's supernode."""
        try:
            view = await client.federation(node.config.federation)
        except RegistryNotFound:
            self._connected(node, client)
            return False
        self._connected(node, client)
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
        self._connected(node, client)
        changed = (registration.path, flags) != (self._registered_as, self._flags)
        self._token = registration.token
        self._flags = flags
        self._registered_as = registration.path
        self._version = registration.version
        if registration.conductor is not None:
            self._holder = registration.conductor.node_id
        elif not registration.conductor_granted:
            self._holder = None
        if self._relay is not None:
            self._relay.set_token(registration.token if registration.supernode_granted else None)
        if supernode:
            self._replace_peers(node, registration.other_supernodes)
        if changed:
            logger.info(
                "registered %s at %s (supernode %s); %d other supernode(s)",
                registration.path,
                self.url,
                registration.supernode_granted,
                len(registration.other_supernodes),
            )

    async def _heartbeat(self, node: Node, client: RegistryClient) -> None:
        assert self._token is not None
        members = members_report(node) if self._flags[0] else None
        try:
            beat = await client.heartbeat(self._token, members)
        except RegistryNotFound:
            logger.info("registration at %s expired or was reset; registering again", self.url)
            flags = self._flags
            self._forget_registration()
            await self._register(node, client, flags)
            return
        self._connected(node, client)
        if beat.version != self._version:
            view = await client.federation(node.config.federation)
            self._version = beat.version
            if self._flags[0]:
                self._replace_peers(node, _supernodes(view))
            conductor = view.get("conductor")
            if isinstance(conductor, dict):
                self._holder = conductor.get("node_id") if conductor.get("holder") else None

    async def _release(self, node: Node, client: RegistryClient) -> None:
        """This node no longer holds the conductor: release it at the registry (a stale
        record there would refuse the real holder until it expired). Not while a claim of its
        own is on its way, and only if the node still does not hold it."""
        if self._claims_in_flight:
            return
        state = await client.conductor(node.config.federation)
        if (
            state.node_id == node.id
            and self._token is not None
            and not node.core.election.holds(CONDUCTOR)
        ):
            state = await self._compare_and_set(node, client, state, None)
            logger.info("released the conductor at %s", self.url)
        self._learn_holder(state)

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
        self.state = "connected"
        self.last_error = None

    # -- helpers ------------------------------------------------------------------------------

    def _connected(self, node: Node, client: RegistryClient) -> None:
        registry = self._registry_of(client)
        registry.failures = 0
        if registry is not self._active:
            return  # a late answer of a registry the bridge has left
        self.state = "connected"
        self.last_error = None
        if self._reached is not True:
            if self._reached is False:
                logger.warning("registry %s reachable again", self.url)
                self._wake.set()  # heartbeat (or register again) before the registration expires
            self._reached = True
            node.external_available(True)

    def _failed(self, node: Node, exc: Exception, client: RegistryClient) -> None:
        """The registry of *client* did not answer: leave it alone for a back-off that
        doubles with each failure in a row, and move to the next registry that is not in its
        own back-off (the next round starts at once); with none, the node is told the
        registry is unreachable."""
        registry = self._registry_of(client)
        if registry is not self._active:
            return  # a late failure of a registry the bridge has left already
        now = _now()
        registry.failures += 1
        registry.retry_at = now + self._backoff(registry.failures)
        self.last_error = f"{registry.url}: {exc}"
        standby = self._standby(now)
        if standby is not None:
            logger.warning("registry %s unreachable (%s); moving to %s", self.url, exc, standby.url)
            self._move_to(standby)
            self._wake.set()
            return
        first = min(self._registries, key=lambda r: r.retry_at)  # the first to try again
        if first is not self._active:
            self._move_to(first)
        self.state = "unreachable"
        if self._reached is not False:
            logger.warning("registry %s unreachable: %s", registry.url, exc)
            self._reached = False
            node.external_available(False)

    def _registry_of(self, client: RegistryClient) -> _Registry:
        return next(r for r in self._registries if r.client is client)

    def _standby(self, now: float) -> _Registry | None:
        """The next registry after the one in use (in the given order) that is not in its
        back-off, if any."""
        i = self._registries.index(self._active)
        for registry in self._registries[i + 1 :] + self._registries[:i]:
            if registry.retry_at <= now:
                return registry
        return None

    def _move_to(self, registry: _Registry) -> None:
        """Use *registry* from now on: its registration (if any) is another one, so the next
        round registers there afresh (on a database shared with the old registry, the same
        node id takes its path over)."""
        self._active = registry
        self.switches += 1
        self._forget_registration()
        if self._relay is not None:
            self._relay.client = self._client()  # relays through the registry in use

    def _learn_holder(self, state: ConductorState) -> None:
        self._holder = state.node_id if state.holder is not None else None

    def _forget_registration(self) -> None:
        self._token = None
        self._registered_as = None
        self._version = None
        self._flags = (False, False)
        if self._relay is not None:
            self._relay.set_token(None)

    def _replace_peers(self, node: Node, peers: Iterable[Peer]) -> None:
        self._peers.clear()
        remote: dict[tuple[str, int], str] = {}
        for peer in peers:
            if peer.node_id != node.id and peer.orchestra != node.config.orchestra:
                self._learn(peer)
                remote[(peer.host, peer.port)] = peer.path
        if self._relay is not None:
            self._relay.set_peers(remote)

    def _learn(self, peer: Peer) -> None:
        self._peers[peer.node_id or peer.path] = (peer.host, peer.port)

    def _propose(self, node: Node) -> None:
        """Offer every learned supernode to the node (a no-op for ones it knows alive)."""
        for address in self._peers.values():
            if address != tuple(node.address):
                node.add_peer(address, "registry")


@attrs.define(eq=False)
class _Registry:
    """One of the bridge's registries: its client while the bridge runs, and its back-off."""

    url: str
    client: RegistryClient | None = None
    failures: int = 0
    """Failed exchanges in a row (0 after any answer)."""
    retry_at: float = float("-inf")
    """Not tried again before this time (trio's clock)."""


def _now() -> float:
    return trio.current_time()


def _has_live_peer(node: Node) -> bool:
    return any(view.is_live and view.node_id != node.id for view in node.members())


def members_report(node: Node) -> list[dict[str, Any]]:
    """The members report a supernode sends with its heartbeat: its orchestra's members as
    it sees them (each path once, a live claimant first), with the posts they hold; at most
    :data:`~registry_bridge._members.MAX_MEMBERS`, by path."""
    core = node.core
    holders = set(core.supernodes().values())
    conductor = core.conductor()
    by_path: dict[str, Any] = {}
    for view in node.members():
        if view.orchestra != node.config.orchestra:
            continue
        known = by_path.get(view.path)
        if known is None or (view.is_live and not known.is_live):
            by_path[view.path] = view
    report = []
    for path in sorted(by_path)[:MAX_MEMBERS]:
        view = by_path[path]
        posts = [
            p
            for p, held in (
                ("supernode", view.node_id in holders),
                ("conductor", view.node_id == conductor),
            )
            if held
        ]
        report.append({"path": path, "state": view.status, "posts": posts})
    return report


def _supernodes(view: Mapping[str, Any]) -> list[Peer]:
    """The supernode registrations in a federation view (:meth:`RegistryClient.federation`)."""
    return [
        Peer.from_json(entry)
        for orchestra in view.get("orchestras", ())
        for entry in orchestra.get("nodes", ())
        if entry.get("supernode")
    ]


def registry_extension_factory(config: RegistryConfig) -> RegistryBridge | None:
    """The bridge *config* asks for (``stagemesh node --registry URL``, repeated or a
    comma-separated list: the registries to move to in turn), else ``None``."""
    return RegistryBridge(config.urls) if config.urls else None
