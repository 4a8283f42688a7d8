"""A simulated registry for the deterministic simulator, with the faults a real one has.

:class:`RegistryModel` keeps what the real registry keeps for a federation (the store of
``registry_bridge``), reduced to what nodes use: registrations that expire without heartbeats,
supernodes per orchestra, the conductor with its fencing term (compare-and-set), and the
federation's time: an epoch on the registry host's clock (its own skew and drift), with the
lineage it belongs to, which a running node can hand over (:class:`~mesh._nodecore.EpochOffer`).

:class:`SimRegistry` attaches it to a :class:`~mesh._sim.Simulator` and plays the node-side
bridge of every :class:`~mesh._nodecore.NodeCore` node: every ``interval`` it registers the
node while it is supernode or conductor candidate (heartbeats otherwise), proposes the other
orchestras' supernodes to it, finds a supernode for a node with no live peer, releases the
conductor for a node that no longer holds it; and it carries the node's requests (conductor
claims, clock requests, epoch offers) to the model and the answers back, each HTTP exchange
taking a round trip drawn from ``latency``. The faults: the registry killed (:meth:`kill`,
:meth:`start`: connection refused, state kept), restarted on an empty database
(:meth:`restart_empty`), reset by an organiser (:meth:`reset`), slow (:attr:`slow`, seconds
added to every request), unreachable from some orchestras' sites (:attr:`cut`: requests time
out). With ``direct_paths`` each round also tells a supernode which other sites'
supernodes it reaches directly (those the network carries both ways now), as the real bridge
does from its relay's paths. Everything random comes from the simulator's seed.

The bridge's decisions here mirror ``registry_bridge._bridge.RegistryBridge`` (the mesh library
cannot import it), and the model's rules the real store's: the conductor claim is granted when
the registry records the claimant or nobody (only a holder releases the post, or its
registration expires); a node is told the registry is unreachable when a request fails and
reachable when one succeeds.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs

from mesh._clock import SkewedClock
from mesh._election import CONDUCTOR, ClaimAnswer, ClaimRequest
from mesh._lineage import Handover
from mesh._nodecore import EpochOffer, NodeCore
from mesh._sim import SimNode, Simulator
from mesh._wire import Address, ClockReply, ClockRequest

__all__ = ["REGISTRY", "RegistryModel", "SimRegistry"]

REGISTRY = "registry"
"""The external clock's name, as the real bridge uses it."""


@attrs.define
class _Registration:
    orchestra: str
    address: Address
    supernode: bool
    last_seen: float


@attrs.define
class RegistryModel:
    """The registry's state for one federation (see the module docstring). Times are virtual
    (true) seconds; the registry's own clock is ``clock`` of them."""

    clock: SkewedClock = attrs.field(factory=SkewedClock)
    ttl: float = 10.0
    epoch: float | None = None  # on the registry's clock
    lineage: str | None = None
    registrations: dict[str, _Registration] = attrs.field(factory=dict)
    holder: str | None = None
    term: int = 0
    holder_changed_at: float = 0.0
    time_changed_at: float = 0.0  # last reset, empty restart or epoch handover
    _epochs_made: int = 0

    def _local(self, now: float) -> float:
        return self.clock(now)

    def sweep(self, now: float) -> None:
        """Drop registrations not heard from for ``ttl`` (releasing the conductor)."""
        for node_id in [n for n, r in self.registrations.items() if now - r.last_seen > self.ttl]:
            self.unregister(now, node_id)

    def register(
        self,
        now: float,
        node_id: str,
        orchestra: str,
        address: Address,
        supernode: bool,
        conductor: bool = False,
    ) -> None:
        """Register (again) or refresh a node, with the conductor if it asks and nobody else
        holds it; the first registration sets the epoch."""
        self.sweep(now)
        old = self.registrations.get(node_id)
        if supernode and (old is None or not old.supernode):
            for reg in self.registrations.values():
                if reg.orchestra == orchestra:
                    reg.supernode = False  # takeover
        self.registrations[node_id] = _Registration(orchestra, address, supernode, now)
        if self.epoch is None:
            self._epochs_made += 1
            self.epoch = self._local(now)
            self.lineage = f"registry-{self._epochs_made}"
            self.time_changed_at = now
        if conductor and self.holder in (None, node_id) and self.holder != node_id:
            self._set_holder(now, node_id)

    def heartbeat(self, now: float, node_id: str) -> bool:
        """Keep a registration alive; ``False`` if it expired or was reset away."""
        self.sweep(now)
        reg = self.registrations.get(node_id)
        if reg is None:
            return False
        reg.last_seen = now
        return True

    def unregister(self, now: float, node_id: str) -> None:
        """Remove a registration, releasing the conductor it held."""
        if self.registrations.pop(node_id, None) is not None and self.holder == node_id:
            self._set_holder(now, None)

    def supernodes(self, now: float) -> list[tuple[str, str, Address]]:
        """(node id, orchestra, address) of every registered supernode."""
        self.sweep(now)
        return [(n, r.orchestra, r.address) for n, r in self.registrations.items() if r.supernode]

    def claim(self, now: float, node_id: str, request: ClaimRequest) -> ClaimAnswer:
        """The compare-and-set, as the real registry allows it: granted when the registry
        records *node_id* or nobody (a holder keeps the post until it releases it or its
        registration expires); the claimant must be registered."""
        self.sweep(now)
        granted = node_id in self.registrations and self.holder in (None, node_id)
        if granted and self.holder != node_id:
            self._set_holder(now, node_id)
        return ClaimAnswer(request.claim, granted, self.holder, self.term)

    def release(self, now: float, node_id: str) -> None:
        """*node_id* no longer conducts."""
        if self.holder == node_id:
            self._set_holder(now, None)

    def _set_holder(self, now: float, holder: str | None) -> None:
        self.holder = holder
        self.term += 1
        self.holder_changed_at = now

    def elapsed(self, now: float) -> tuple[float, str | None]:
        """Federation time on the registry's clock and its lineage (``None`` without epoch)."""
        if self.epoch is None:
            return 0.0, None
        return max(0.0, self._local(now) - self.epoch), self.lineage

    def read(self, now: float) -> tuple[float, float | None, str | None]:
        """What ``GET .../elapsed`` says: the registry's own clock, its epoch and lineage."""
        return self._local(now), self.epoch, self.lineage

    def offer(self, now: float, node_id: str, epoch: float, lineage: str) -> bool:
        """A registered node hands over the federation's time (*epoch* on the registry's
        clock): taken without an epoch or when it is older, never later than now."""
        self.sweep(now)
        if node_id not in self.registrations or epoch > self._local(now):
            return False
        if self.epoch is not None and epoch >= self.epoch:
            return False
        self.epoch, self.lineage, self.time_changed_at = epoch, lineage, now
        return True

    def reset(self, now: float) -> None:
        """An organiser's reset: registrations dropped, conductor released (the term goes on),
        epoch cleared."""
        self.registrations.clear()
        if self.holder is not None:
            self._set_holder(now, None)
        else:
            self.term += 1
        self.epoch = self.lineage = None
        self.time_changed_at = now

    def wipe(self, now: float) -> None:
        """An empty database: nothing at all, the term back at 0."""
        self.registrations.clear()
        self.holder, self.term, self.holder_changed_at = None, 0, now
        self.epoch = self.lineage = None
        self.time_changed_at = now


@attrs.define
class _Bridge:
    core: NodeCore
    registered: bool = False
    reached: bool | None = None  # what the node was last told
    rounds: int = 0  # the current chain of rounds (an earlier one stops)


class SimRegistry:
    """The simulated registry and every node's bridge to it (see the module docstring).

    *latency* is the (low, high) range of an HTTP round trip; *interval* the bridge's round;
    *timeout* how long a request to an unreachable registry takes to fail.
    """

    def __init__(
        self,
        sim: Simulator,
        *,
        clock: SkewedClock | None = None,
        latency: tuple[float, float] = (0.0008, 0.003),
        interval: float = 2.0,
        timeout: float = 2.0,
        ttl: float = 10.0,
        direct_paths: bool = False,
    ) -> None:
        self.sim = sim
        self.direct_paths = direct_paths
        """Whether each round tells a supernode which other sites' supernodes it reaches
        directly (:meth:`~mesh._nodecore.NodeCore.set_direct`), as the real bridge does from
        its relay's paths: those the network carries both ways now. Without, no site is
        direct (every site behind its own NAT: each site's top times it by the registry)."""
        self.model = RegistryModel(clock if clock is not None else SkewedClock(), ttl)
        self.latency = latency
        self.interval = interval
        self.timeout = timeout
        self.up = True
        self.slow = 0.0
        """Seconds added to every request (a registry taking 1 s per request)."""
        self.cut: set[str] = set()
        """Orchestras whose site cannot reach the registry (their requests time out)."""
        self.requests = 0
        self._rng = random.Random(sim.rng.getrandbits(64))
        self._bridges: dict[str, _Bridge] = {}
        sim.on_input = self._after_input

    # -- faults -------------------------------------------------------------------------------

    def kill(self) -> None:
        """The registry process dies: requests are refused; its database is kept."""
        self.up = False

    def start(self) -> None:
        """The registry runs (again) on the database it had."""
        self.up = True

    def restart_empty(self) -> None:
        """The registry comes back on an empty database."""
        self.model.wipe(self.sim.now)
        self.up = True

    def reset(self) -> None:
        """An organiser resets the federation."""
        self.model.reset(self.sim.now)

    # -- observing ----------------------------------------------------------------------------

    def elapsed(self) -> tuple[float, str | None]:
        """The registry's federation time now and its lineage."""
        return self.model.elapsed(self.sim.now)

    def reachable(self, node: SimNode) -> bool:
        """Whether *node*'s requests reach a running registry now."""
        return self.up and node.record.orchestra not in self.cut

    # -- the bridges --------------------------------------------------------------------------

    def _after_input(self, node: SimNode) -> None:
        core = node.core
        if not isinstance(core, NodeCore):
            return
        bridge = self._bridges.get(node.node_id)
        if bridge is None or bridge.core is not core:
            bridge = _Bridge(core)
            self._bridges[node.node_id] = bridge
            core.use_external_clock(node.local(self.sim.now), REGISTRY)
            self._schedule_round(node, bridge, self._rng.uniform(0.0, 0.2))
        for request in core.take_external_requests():
            self._carry(node, bridge, request)

    def _schedule_round(self, node: SimNode, bridge: _Bridge, delay: float) -> None:
        bridge.rounds += 1
        chain = bridge.rounds

        def run() -> None:
            if node.up and node.core is bridge.core and bridge.rounds == chain:
                self._round(node, bridge)

        self.sim.schedule(delay, run)

    def _exchange(
        self,
        node: SimNode,
        bridge: _Bridge,
        at_registry: Callable[[float], Any],
        answer: Callable[[float, Any], None],
    ) -> None:
        """One HTTP exchange: *at_registry* runs at the registry (true time), *answer* back at
        the node (its local time) with the result, and the node learns whether the registry
        answers."""
        self.requests += 1
        low, high = self.latency
        rtt = self._rng.uniform(low, high) + self.slow
        share = self._rng.uniform(0.3, 0.7)
        if not self.reachable(node):
            delay = self.timeout if self.up else low / 2  # a timeout, or connection refused
            self.sim.call_node(node, delay, lambda now: self._tell(node, bridge, now, False))
            return

        def arrive() -> None:
            if not self.up:  # killed while the request was on its way
                self.sim.call_node(node, 0.0, lambda now: self._tell(node, bridge, now, False))
                return
            result = at_registry(self.sim.now)

            def back(now: float) -> None:
                self._tell(node, bridge, now, True)
                answer(now, result)

            self.sim.call_node(node, rtt * (1 - share), back)

        self.sim.schedule(rtt * share, arrive)

    def _tell(self, node: SimNode, bridge: _Bridge, now: float, reached: bool) -> None:
        if bridge.reached is not reached:
            if reached and bridge.reached is False:
                self._schedule_round(node, bridge, 0.0)  # back: heartbeat before it expires
            bridge.reached = reached
            bridge.core.set_external_available(now, reached)

    def _carry(self, node: SimNode, bridge: _Bridge, request: Any) -> None:
        core = bridge.core
        node_id, orchestra, address = node.node_id, node.record.orchestra, node.address
        model = self.model
        if isinstance(request, ClockRequest):

            def clock(now: float) -> tuple[float, float | None, str | None]:
                return model.read(now)

            def clock_back(local: float, result: tuple[float, float | None, str | None]) -> None:
                t, epoch, lineage = result
                reply = ClockReply(request.probe, request.t1, t, t, 0.0, True)
                held = () if epoch is None or lineage is None else (Handover(epoch, lineage),)
                core.handle_external_clock_reply(local, reply, REGISTRY, held)

            self._exchange(node, bridge, clock, clock_back)
        elif isinstance(request, ClaimRequest):

            def claim(now: float) -> ClaimAnswer:
                model.sweep(now)
                if node_id not in model.registrations:  # the bridge registers it first
                    model.register(now, node_id, orchestra, address, supernode=False)
                return model.claim(now, node_id, request)

            def claim_back(local: float, result: ClaimAnswer) -> None:
                core.handle_claim_answer(local, result)

            self._exchange(node, bridge, claim, claim_back)
        elif isinstance(request, EpochOffer):

            def offer(now: float) -> bool:
                model.sweep(now)
                if node_id not in model.registrations:
                    model.register(now, node_id, orchestra, address, supernode=False)
                return model.offer(now, node_id, request.epoch, request.lineage)

            self._exchange(node, bridge, offer, _ignore)

    def _round(self, node: SimNode, bridge: _Bridge) -> None:
        """One round of the node's bridge (see the module docstring)."""
        core = bridge.core
        me = node.node_id
        orchestra = node.record.orchestra
        alone = not any(v.is_live and v.node_id != me for v in core.membership.members())
        supernode = core.supernode(orchestra) == me
        candidate = core.membership.me.meta.get("c") is True
        model = self.model
        address = node.address

        # As the real bridge: registered with the conductor while it holds it.
        conducts = core.election.holds(CONDUCTOR)

        def at_registry(now: float) -> tuple[list[tuple[str, str, Address]], bool, bool]:
            if supernode or candidate:
                if not model.heartbeat(now, me) or supernode != model.registrations[me].supernode:
                    model.register(now, me, orchestra, address, supernode, conducts)
            elif me in model.registrations:
                model.unregister(now, me)
            return model.supernodes(now), me in model.registrations, model.holder == me

        def back(
            local_now: float, result: tuple[list[tuple[str, str, Address]], bool, bool]
        ) -> None:
            supernodes, registered, holder = result
            bridge.registered = registered
            if holder and not core.election.holds(CONDUCTOR):
                # The registry still records this node, which no longer conducts: release.
                self._exchange(node, bridge, lambda now: model.release(now, me), _ignore)
            others = [s for s in supernodes if s[0] != me]
            own = [s for s in others if s[1] == orchestra]
            if alone:
                chosen = own or others
            elif supernode:
                chosen = [s for s in others if s[1] != orchestra]
            else:
                chosen = []
            for _, _, peer in chosen:
                core.add_candidate(local_now, peer)
            if self.direct_paths:
                core.set_direct(local_now, self._direct(node, others) if supernode else ())

        self._exchange(node, bridge, at_registry, back)
        delay = self.interval if bridge.reached is not False else min(8.0, 2 * self.interval)
        self._schedule_round(node, bridge, delay)

    def _direct(self, node: SimNode, others: list[tuple[str, str, Address]]) -> list[str]:
        """The other sites' supernodes among *others* that *node* reaches directly now: running,
        and the network carries traffic both ways."""
        sim = self.sim
        direct = []
        for node_id, orchestra, address in others:
            peer = sim.nodes.get(address)
            if orchestra == node.record.orchestra or peer is None or not peer.up:
                continue
            if sim.reachable(node.address, address) and sim.reachable(address, node.address):
                direct.append(node_id)
        return direct


def _ignore(local: float, result: object) -> None:
    """An answer nobody waits for."""
