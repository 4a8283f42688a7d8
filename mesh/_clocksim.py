"""The clock's randomized harness: clock cores alone on the project's simulator.

A few nodes, each a :class:`~mesh._clock.ClockCore` (through :class:`mesh._simpeers.ClockPeer`)
on a skewed, drifting local clock (:class:`~mesh._clock.SkewedClock`), run by
:class:`mesh._sim.Simulator` over one of the delay profiles below (jittered, asymmetric, with
outliers and loss: :class:`~mesh._sim.LinkModel`). A seed reproduces a run exactly.
``tests/test_clock_sim.py`` checks the properties over hundreds of seeds and
``bench/clock_sim.py`` prints the agreement table:

- federation time never decreases on any node (checked after every input a node handles, and
  on a grid of instants);
- once a node says it is synced, its federation time is within its ``error_bound`` of the
  reference's (at the same true instant);
- after warm-up, how far each synced follower is from the reference (the figures).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable

import attrs

from mesh._clock import ClockConfig, ClockCore, ClockSnapshot, SkewedClock
from mesh._profiles import get_profile
from mesh._scenarios import percentile as _percentile
from mesh._sim import LinkModel, NodeCall, SimNode, Simulator
from mesh._simpeers import ClockPeer, PeerDirectory

__all__ = [
    "LAN",
    "LOOPBACK",
    "LOOPBACK_UNIFORM",
    "PROFILES",
    "SOAK",
    "ClockNode",
    "ClockSim",
    "ClockSimResult",
    "PartitionResult",
    "partition_run",
    "percentile",
    "random_run",
]

LAN = LinkModel(
    loss=0.01, delay=0.1e-3, jitter=1.9e-3, asymmetry=0.5, outlier=0.02, outlier_delay=20e-3
)
"""Jittered asymmetric LAN: 0.1-2 ms one way (from the lower address half as jittery), 2%
outliers of 20 ms, 1% loss."""
LOOPBACK_UNIFORM = LinkModel(
    delay=20e-6, jitter=180e-6, asymmetry=1.5, outlier=0.01, outlier_delay=1e-3
)
"""A harsh loopback: 20-200 us uniform one way (from the lower address 50% more jittery), 1%
outliers of 1 ms."""
LOOPBACK = LinkModel(
    delay=20e-6,
    jitter=20e-6,
    exponential=True,
    asymmetry=1.5,
    outlier=0.02,
    outlier_delay=200e-6,
)
"""Loopback as measured (a round trip of ~40 us median, ~140 us p99 between two Python
processes): 20 us plus exponential jitter of mean 20 us (30 us the other way), 2% outliers of
200 us."""
SOAK = LinkModel(loss=0.05, delay=10e-3, jitter=20e-3)
"""The soak's network (tests/soak.py): 20 ms +- 10 ms one way, uniform and symmetric (which
reorders), 5% loss."""
PROFILES = {"loopback": LOOPBACK, "loopback-uniform": LOOPBACK_UNIFORM, "lan": LAN}
"""The delay profiles by name."""


@attrs.define(eq=False)
class ClockNode:
    """A node of the harness: its name (what the cores call it: ``n0``, ``n1``...), local
    clock, clock core and simulated node."""

    node_id: str
    clock: SkewedClock
    core: ClockCore
    sim_node: SimNode
    last_fed: float = -math.inf


@attrs.define
class ClockSimResult:
    """What one run measured."""

    seed: int
    diffs: list[float] = attrs.Factory(list)
    """|follower - reference| of every synced follower at every check after warm-up."""
    at: list[float] = attrs.Factory(list)
    """The (true) time of each of ``diffs``."""
    violations: list[str] = attrs.Factory(list)
    decreases: int = 0
    checks: int = 0
    synced_at: dict[str, float] = attrs.Factory(dict)
    """The first check at which each node was synced."""
    sync_delays: list[float] = attrs.Factory(list)
    """From being given a reference to synced, each time."""
    snapshots: dict[str, ClockSnapshot] = attrs.Factory(dict)
    """Every node's state at the end."""


class ClockSim:
    """*nodes* clock cores, node 0 the reference at first, optional reference changes at
    given (true) times: ``(time, index of the new reference)``."""

    def __init__(
        self,
        seed: int,
        *,
        nodes: int = 4,
        link: LinkModel = LAN,
        max_skew: float = 2.0,
        max_drift_ppm: float = 200.0,
        config: ClockConfig | None = None,
        reference_changes: tuple[tuple[float, int], ...] = (),
    ) -> None:
        rng = random.Random(seed)
        self.result = ClockSimResult(seed)
        self.sim = Simulator(rng.getrandbits(64), get_profile("lan"), link)
        self.sim.on_input = self._after_input
        self.directory = PeerDirectory()
        self.nodes: list[ClockNode] = []
        self._by_sim_node: dict[SimNode, ClockNode] = {}
        self._warmup = math.inf
        for i in range(nodes):
            clock = SkewedClock(
                rng.uniform(-max_skew, max_skew), rng.uniform(-max_drift_ppm, max_drift_ppm)
            )
            local = clock(0.0)
            # initial_time = local reading: the skew shows as a +-2 s disagreement at start.
            # Node 0, the first reference, is 10 s older (its lineage is the federation's):
            # every other node steps forward to it at its first sync. (A node ahead of its
            # reference would slew back at 0.4%; the node runtime makes the younger lineage
            # step instead, see mesh/_lineage.py.)
            core = ClockCore(local, initial_time=local + (10.0 if i == 0 else 0.0), config=config)
            core.set_reference(local, "n0", is_self=i == 0)
            record = self.sim.new_record(f"n{i}")
            self.directory.add(f"n{i}", record)
            peer = ClockPeer(core, record.node_id, self.directory)
            node = ClockNode(
                f"n{i}", clock, core, self.sim.add_node(record, core=peer, clock=clock)
            )
            self.nodes.append(node)
            self._by_sim_node[node.sim_node] = node
        self.reference = 0
        self.follows = [0] * nodes
        """The node each node takes its time from (itself: it is a reference)."""
        self._ref_set_at = dict.fromkeys(range(1, nodes), 0.0)
        for t, index in reference_changes:
            self.sim.schedule(t, self._reference_change(index))

    def _reference_change(self, index: int) -> Callable[[], None]:
        return lambda: self._set_reference(index)

    def follow(self, i: int, reference: int) -> None:
        """Make node *i* follow node *reference* (a chain of references) from now."""
        node = self.nodes[i]
        self.sim.call_node(node.sim_node, 0.0, _setter(node.core, reference, False))

    def _after_input(self, sim_node: SimNode) -> None:
        node = self._by_sim_node.get(sim_node)
        if node is None:
            return
        fed = node.core.federation_time(sim_node.local(self.sim.now))
        if fed < node.last_fed:
            self.result.decreases += 1
            self.result.violations.append(f"t={self.sim.now:.6f} {node.node_id} went back")
        node.last_fed = fed

    def _set_reference(self, index: int) -> None:
        self.reference = index
        self.set_references(range(len(self.nodes)), index, handover=False)

    def set_references(self, members: Iterable[int], index: int, *, handover: bool) -> None:
        """Make node *index* the reference of *members* (itself included if it is one of
        them); with *handover* each follower keeps the bound it has if it is synced (as a
        node does when its reference changes within one lineage, see
        :meth:`mesh._clock.ClockCore.set_reference`)."""
        for i in members:
            self.sim.call_node(self.nodes[i].sim_node, 0.0, self._follow(i, index, handover))

    def _follow(self, i: int, index: int, handover: bool) -> NodeCall:
        set_it = _setter(self.nodes[i].core, index, i == index, handover=handover)

        def act(now: float) -> None:
            set_it(now)
            self.follows[i] = index
            if i != index:
                self._ref_set_at[i] = self.sim.now

        return act

    def run(
        self,
        until: float,
        *,
        check_every: float = 0.05,
        warmup: float = 30.0,
        on_check: Callable[[ClockSim], None] | None = None,
    ) -> ClockSimResult:
        """Run to true time *until*, checking the properties every *check_every* seconds and
        counting the agreement from *warmup* on."""
        self._warmup = warmup

        def check() -> None:
            self._check()
            if on_check is not None:
                on_check(self)
            self.sim.schedule(check_every, check)

        self.sim.schedule(check_every - self.sim.now, check)
        self.sim.run_until(until)
        for node in self.nodes:
            self.result.snapshots[node.node_id] = node.core.snapshot(node.clock(self.sim.now))
        return self.result

    def _check(self) -> None:
        now = self.sim.now
        feds: dict[int, float] = {}
        for r in sorted(set(self.follows)):
            ref = self.nodes[r]
            feds[r] = ref.core.federation_time(ref.clock(now))
            if r == self.follows[r]:
                if feds[r] < ref.last_fed:
                    self.result.decreases += 1
                ref.last_fed = feds[r]
        for i, node in enumerate(self.nodes):
            r = self.follows[i]
            if r == i:
                continue
            snap = node.core.snapshot(node.clock(now))
            self.result.checks += 1
            if snap.federation_time < node.last_fed:
                self.result.decreases += 1
                self.result.violations.append(f"t={now:.6f} {node.node_id} went back")
            node.last_fed = snap.federation_time
            if not snap.synced:
                continue
            self.result.synced_at.setdefault(node.node_id, now)
            if i in self._ref_set_at:
                self.result.sync_delays.append(now - self._ref_set_at.pop(i))
            diff = snap.federation_time - feds[r]
            if abs(diff) > snap.error_bound:
                self.result.violations.append(
                    f"t={now:.6f} {node.node_id} off by {diff * 1e6:.1f} us, "
                    f"bound {snap.error_bound * 1e6:.1f} us"
                )
            if now >= self._warmup:
                self.result.diffs.append(abs(diff))
                self.result.at.append(now)


def _setter(core: ClockCore, reference: int, is_self: bool, *, handover: bool = False) -> NodeCall:
    """Give *core* the reference node *reference* at the node's time (with *handover*, the
    bound it has if synced: see :meth:`ClockSim.set_references`)."""

    def act(now: float) -> None:
        held = None
        if handover and not core.is_reference:  # (a node that defined the time claims no other)
            snap = core.snapshot(now)
            held = snap.error_bound if snap.synced else None
        core.set_reference(now, f"n{reference}", is_self=is_self, handover=held)

    return act


def percentile(values: list[float], q: float) -> float:
    """The *q*-quantile (0..1) of *values* by the nearest-rank method (NaN: no values)."""
    return _percentile(values, q * 100) if values else math.nan


def random_run(
    seed: int, link: LinkModel, until: float, *, reference_change: bool = False
) -> tuple[ClockSim, ClockSimResult]:
    """One run with 2-5 nodes (parameters drawn from *seed*), skews up to +-2 s and drifts up to
    200 ppm on every node, optionally handing the reference to another node mid-run."""
    rng = random.Random(seed * 7919 + 1)
    n = rng.randint(2, 5)
    changes: tuple[tuple[float, int], ...] = ()
    if reference_change:
        changes = ((rng.uniform(12.0, 18.0), rng.randrange(1, n)),)
    sim = ClockSim(seed, nodes=n, link=link, reference_changes=changes)
    return sim, sim.run(until, check_every=0.1, warmup=until / 2)


@attrs.define
class PartitionResult:
    """What :func:`partition_run` measured: each synced follower against its own reference,
    by phase."""

    sim: ClockSim
    steady: list[float] = attrs.Factory(list)
    """Before the first partition (after warm-up) and from 10 s after each heal on."""
    partition: list[float] = attrs.Factory(list)
    """From each cut to its heal."""
    healed: list[float] = attrs.Factory(list)
    """The 10 s after each heal."""

    @property
    def whole(self) -> list[float]:
        """Every sample of the run after warm-up."""
        return self.steady + self.partition + self.healed


def partition_run(
    seed: int,
    until: float = 120.0,
    *,
    nodes: int = 8,
    link: LinkModel = SOAK,
    first: float = 30.0,
    every: float = 40.0,
    length: float = 15.0,
    elected_after: float = 3.0,
    merged_after: float = 0.5,
    config: ClockConfig | None = None,
) -> PartitionResult:
    """The live soak's clock, simulated: *nodes* nodes on the soak's network; from *first* on,
    every *every* seconds a random half is cut off from the rest for *length* seconds. The half
    without the reference (node 0) takes one of its own as reference *elected_after* seconds
    into the cut (its followers hand over, as nodes of one lineage do), and all follow node 0
    again *merged_after* seconds after the heal (its longer tenure wins the post back)."""
    rng = random.Random(seed * 104729 + 7)
    sim = ClockSim(seed, nodes=nodes, link=link, config=config)
    cuts: list[tuple[float, float]] = []
    t = first
    while t + length < until:
        half = rng.sample(range(nodes), nodes // 2)
        near = [i for i in range(nodes) if (i in half) == (0 in half)]
        far = [i for i in range(nodes) if i not in near]
        new_reference = rng.choice(far)
        cuts.append((t, t + length))
        sim.sim.schedule(t, _cut(sim, near, far))
        sim.sim.schedule(t + elected_after, _elect(sim, far, new_reference))
        sim.sim.schedule(t + length, sim.sim.heal)
        sim.sim.schedule(t + length + merged_after, _elect(sim, far, 0))
        t += every
    run = sim.run(until, check_every=0.1, warmup=first)
    out = PartitionResult(sim)
    for at, diff in zip(run.at, run.diffs, strict=True):
        if any(cut <= at < heal for cut, heal in cuts):
            out.partition.append(diff)
        elif any(heal <= at < heal + 10.0 for _, heal in cuts):
            out.healed.append(diff)
        else:
            out.steady.append(diff)
    return out


def _cut(sim: ClockSim, near: list[int], far: list[int]) -> Callable[[], None]:
    return lambda: sim.sim.partition(
        [sim.nodes[i].sim_node for i in near], [sim.nodes[i].sim_node for i in far]
    )


def _elect(sim: ClockSim, members: list[int], reference: int) -> Callable[[], None]:
    return lambda: sim.set_references(members, reference, handover=True)
