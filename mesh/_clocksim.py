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
from collections.abc import Callable

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
    "ClockNode",
    "ClockSim",
    "ClockSimResult",
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
        self._ref_set_at = {i: self.sim.now for i in range(len(self.nodes)) if i != index}
        for i, node in enumerate(self.nodes):
            self.sim.call_node(node.sim_node, 0.0, _setter(node.core, index, i == index))

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
        ref = self.nodes[self.reference]
        ref_fed = ref.core.federation_time(ref.clock(now))
        if ref_fed < ref.last_fed:
            self.result.decreases += 1
        ref.last_fed = ref_fed
        for i, node in enumerate(self.nodes):
            if i == self.reference:
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
            diff = snap.federation_time - ref_fed
            if abs(diff) > snap.error_bound:
                self.result.violations.append(
                    f"t={now:.6f} {node.node_id} off by {diff * 1e6:.1f} us, "
                    f"bound {snap.error_bound * 1e6:.1f} us"
                )
            if now >= self._warmup:
                self.result.diffs.append(abs(diff))


def _setter(core: ClockCore, reference: int, is_self: bool) -> NodeCall:
    """Give *core* the reference node *reference* at the node's time."""
    return lambda now: core.set_reference(now, f"n{reference}", is_self=is_self)


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
