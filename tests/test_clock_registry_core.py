"""The node core's use of the registry's clock, driven by hand: two sites' tops (each a lone
:class:`~mesh._nodecore.NodeCore`) and a registry clock answering their requests over a fixed
1 ms round trip, event by event, with every synced node's bound checked against the
registry's time at every event. (The chaos sweep, ``mesh._chaos``, finds such cases among
many faults; here each transition is shown on its own.)"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable

from mesh._lineage import Handover
from mesh._nodecore import EpochOffer, NodeCore
from mesh._profiles import get_profile
from mesh._sim import new_node_id
from mesh._wire import ClockReply, ClockRequest, MemberRecord

REGISTRY = "registry"
REGISTRY_CLOCK = 1000.0
"""The registry's own clock reads true time plus this."""
ONE_WAY = 0.0005
"""Each way of an exchange with the registry takes this long (true seconds)."""


def _node(name: str, host: int, now: float) -> NodeCore:
    rng = random.Random(host)
    record = MemberRecord(new_node_id(rng), name, name, (f"10.0.0.{host}", 7471), 0)
    return NodeCore(record, get_profile("lan"), now=now, rng=rng, supernode=True, conductor=True)


class _Run:
    """The registry (an epoch on its clock, with its lineage; it takes an older epoch
    offered, as the real one does) and the nodes, every node's local clock true time."""

    def __init__(self, epoch: float, lineage: str) -> None:
        self.epoch, self.lineage = epoch, lineage
        self.offers: list[EpochOffer] = []
        self.nodes: list[NodeCore] = []
        self.cut: set[str] = set()  # nodes whose requests get no answer (ids)
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        # node id -> the most its error against the registry's time exceeded its bound (synced)
        self.worst: dict[str, float] = {}

    def registry_time(self) -> float:
        return self.now + REGISTRY_CLOCK - self.epoch

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._order), action))

    def _carry(self, node: NodeCore) -> None:
        for request in node.take_external_requests():
            if node.node_id in self.cut:
                continue
            if isinstance(request, ClockRequest):
                self._exchange(node, node.stamp(self.now, request))
            elif isinstance(request, EpochOffer):
                self.at(self.now + ONE_WAY, lambda r=request: self._offer(r))

    def _offer(self, offer: EpochOffer) -> None:
        self.offers.append(offer)
        if offer.epoch < self.epoch:
            self.epoch, self.lineage = offer.epoch, offer.lineage

    def _exchange(self, node: NodeCore, request: object) -> None:
        assert isinstance(request, ClockRequest)

        def arrive() -> None:
            t = self.now + REGISTRY_CLOCK
            reply = ClockReply(request.probe, request.t1, t, t, 0.0, True)
            held = (Handover(self.epoch, self.lineage),)
            self.at(self.now + ONE_WAY, lambda: self._answer(node, reply, held))

        self.at(self.now + ONE_WAY, arrive)

    def _answer(self, node: NodeCore, reply: ClockReply, held: tuple[Handover, ...]) -> None:
        node.handle_external_clock_reply(self.now, reply, REGISTRY, held)
        self._carry(node)

    def _timer(self, node: NodeCore) -> None:
        if node.next_deadline() <= self.now:
            node.handle_timer(self.now)
            self._carry(node)

    def run_until(self, end: float) -> None:
        """Run events and node timers until *end*, checking bounds after each."""
        while True:
            due = min((n.next_deadline(), i) for i, n in enumerate(self.nodes))
            first = self._queue[0][0] if self._queue else math.inf
            if min(due[0], first) > end:
                break
            if first <= due[0]:
                when, _, action = heapq.heappop(self._queue)
                self.now = max(self.now, when)
                action()
            else:
                self.now = max(self.now, due[0])
                self._timer(self.nodes[due[1]])
            self._check()
        self.now = end

    def _check(self) -> None:
        for node in self.nodes:
            snap = node.clock_snapshot(self.now)
            if node.lineage_id != self.lineage or not snap.synced:
                continue
            beyond = abs(snap.federation_time - self.registry_time()) - snap.error_bound
            self.worst[node.node_id] = max(self.worst.get(node.node_id, -math.inf), beyond)


def test_a_top_that_ran_on_its_own_follows_its_lineage_at_the_registry_not_moves_it() -> None:
    # Top g founded lineage L 100 s ago and handed it to the registry, then ran on its own (cut
    # off from it) and is now 5 ms ahead of the registry's time of L. Top f, another site's,
    # joins L through the registry and follows it, synced within about 1 ms. Then g reaches
    # the registry again: it must follow L's time there, as f does. Handing the registry an
    # older epoch of L instead moves the registry's time 5 ms under f, beyond f's bound (chaos
    # seeds 6010 and 6494 of the registry sweep: f's bound, and its LAN members', were short
    # until f's next sample).
    g = _node("g", 1, now=-100.005)  # its federation time is true time + 100.005
    run = _Run(epoch=REGISTRY_CLOCK - 100.0, lineage=g.lineage_id)  # L there: true + 100
    f = _node("f", 2, now=0.0)
    run.nodes = [f, g]
    run.cut.add(g.node_id)
    for node in run.nodes:
        node.use_external_clock(0.0, REGISTRY)
    g.set_external_available(0.0, False)
    run.run_until(4.0)
    assert f.lineage_id == g.lineage_id  # f stepped to L, the registry's (older) lineage
    snap = f.clock_snapshot(run.now)
    assert snap.synced and snap.reference == REGISTRY and snap.error_bound < 0.002
    assert run.worst[f.node_id] <= 1e-9
    run.cut.clear()
    run.run_until(10.0)
    # Every synced node stayed within its error bound of the registry's time all along ...
    assert max(run.worst.values()) <= 1e-9, run.worst
    # ... nobody moved L's time at the registry, and g follows it, slewing the 5 ms.
    assert run.offers == [] and run.epoch == REGISTRY_CLOCK - 100.0
    assert g.clock_snapshot(run.now).reference == REGISTRY
    assert g.lineage_status(run.now)["external"]["state"] == "following"
