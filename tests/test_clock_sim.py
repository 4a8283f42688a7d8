"""Clock properties in a small deterministic simulation (virtual time, seeded network).

The harness here is the clock's own: nodes with skewed, drifting local clocks
(:class:`mesh._clock.SkewedClock`), a network that delays (jittered, asymmetric, with outliers)
and drops datagrams, and an event queue in true (virtual) time. A seed reproduces a run exactly.
``bench/clock_sim.py`` runs the same harness over more seeds and prints the agreement table.

Properties, checked at every event and on a fine grid of instants:

- federation time never decreases on any node;
- once a node says it is synced, its federation time is within its ``error_bound`` of the
  reference's (at the same true instant);
- after warm-up, the agreement is far inside the DESIGN.md targets.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from mesh._clock import ClockConfig, ClockCore, SkewedClock
from mesh._wire import ClockReply, ClockRequest

# ---------------------------------------------------------------------------------------------
# The harness


@attrs.frozen
class NetProfile:
    """One-way delays: ``lo`` plus a jitter, uniform up to ``hi`` or (``exponential``)
    exponential with mean ``hi - lo``; the way back's jitter is scaled by ``asymmetry``; plus
    ``outlier`` seconds with probability ``outlier_p``; ``loss`` drops a datagram."""

    name: str
    lo: float
    hi: float
    asymmetry: float = 1.0
    outlier_p: float = 0.0
    outlier: float = 0.0
    loss: float = 0.0
    exponential: bool = False


LAN = NetProfile("lan", 0.1e-3, 2e-3, asymmetry=0.5, outlier_p=0.02, outlier=20e-3, loss=0.01)
"""Jittered asymmetric LAN: 0.1-2 ms one way (the way back half as jittery), 2% outliers of
20 ms, 1% loss."""
LOOPBACK_UNIFORM = NetProfile(
    "loopback-uniform", 20e-6, 200e-6, asymmetry=1.5, outlier_p=0.01, outlier=1e-3
)
"""A harsh loopback: 20-200 us uniform one way (the way back 50% more jittery), 1% outliers."""
LOOPBACK = NetProfile(
    "loopback", 20e-6, 40e-6, asymmetry=1.5, outlier_p=0.02, outlier=200e-6, exponential=True
)
"""Loopback as measured (reference/gossip.md 4.2: RTT median ~40 us, p99 ~140 us): 20 us plus
exponential jitter of mean 20 us (30 us back), 2% outliers of 200 us."""


@attrs.define
class SimNode:
    """A node of the simulation: its local clock and its clock core."""

    node_id: str
    clock: SkewedClock
    core: ClockCore
    last_fed: float = -math.inf
    timer_gen: int = 0


@attrs.define
class SimResult:
    """What one run measured."""

    seed: int
    diffs: list[float] = attrs.Factory(list)  # |follower - reference| after warm-up, synced
    violations: list[str] = attrs.Factory(list)
    decreases: int = 0
    checks: int = 0
    synced_at: dict[str, float] = attrs.Factory(dict)  # first synced check per node
    sync_delays: list[float] = attrs.Factory(list)  # from setting a reference to synced
    snapshots: dict[str, Any] = attrs.Factory(dict)


class ClockSim:
    """N nodes, node 0 the reference at first, optional reference changes at given times."""

    def __init__(
        self,
        seed: int,
        *,
        nodes: int = 4,
        profile: NetProfile = LAN,
        max_skew: float = 2.0,
        max_drift_ppm: float = 200.0,
        config: ClockConfig | None = None,
        reference_changes: tuple[tuple[float, int], ...] = (),
    ) -> None:
        self.rng = random.Random(seed)
        self.profile = profile
        self.result = SimResult(seed)
        self.queue: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.nodes: list[SimNode] = []
        for i in range(nodes):
            clock = SkewedClock(
                self.rng.uniform(-max_skew, max_skew),
                self.rng.uniform(-max_drift_ppm, max_drift_ppm),
            )
            local = clock(0.0)
            # initial_time = local reading: the skew shows as a +-2 s disagreement at start.
            # Node 0, the first reference, is 10 s older (its lineage is the federation's):
            # every other node steps forward to it at its first sync. (A node ahead of its
            # reference would slew back at 0.4%; the node runtime makes the younger lineage
            # step instead, see mesh/_lineage.py and tests/test_lineage.py.)
            core = ClockCore(local, initial_time=local + (10.0 if i == 0 else 0.0), config=config)
            self.nodes.append(SimNode(f"n{i}", clock, core))
        self.reference = 0
        self._ref_set_at: dict[int, float] = {}
        self._set_reference(0)
        for t, idx in reference_changes:
            self._push(t, "reference", idx)

    # --- plumbing

    def _push(self, t: float, kind: str, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (t, self.seq, kind, data))

    def _local(self, i: int) -> float:
        return self.nodes[i].clock(self.now)

    def _after_input(self, i: int) -> None:
        node = self.nodes[i]
        fed = node.core.federation_time(self._local(i))
        if fed < node.last_fed:
            self.result.decreases += 1
            self.result.violations.append(f"t={self.now:.6f} {node.node_id} went back")
        node.last_fed = fed
        for dest, msg in node.core.take_outputs():
            self._send(i, int(dest[1:]), msg)
        node.timer_gen += 1
        deadline = node.core.next_deadline()
        if deadline is not None:
            # A hair late, so that rounding in to_true cannot make the timer fire early.
            t = max(self.now, node.clock.to_true(deadline) + 1e-9)
            self._push(t, "timer", (i, node.timer_gen))

    def _delay(self, back: bool) -> float | None:
        p = self.profile
        if self.rng.random() < p.loss:
            return None
        if p.exponential:
            jitter = self.rng.expovariate(1.0 / (p.hi - p.lo))
        else:
            jitter = self.rng.uniform(0.0, p.hi - p.lo)
        d = p.lo + jitter * (p.asymmetry if back else 1.0)
        if self.rng.random() < p.outlier_p:
            d += p.outlier
        return d

    def _send(self, src: int, dst: int, msg: ClockRequest | ClockReply) -> None:
        d = self._delay(isinstance(msg, ClockReply))
        if d is not None:
            self._push(self.now + d, "deliver", (src, dst, msg))

    def _set_reference(self, idx: int) -> None:
        self.reference = idx
        self._ref_set_at = {i: self.now for i in range(len(self.nodes)) if i != idx}
        for i, node in enumerate(self.nodes):
            node.core.set_reference(self._local(i), f"n{idx}", is_self=i == idx)
            self._after_input(i)

    # --- running

    def run(
        self,
        until: float,
        *,
        check_every: float = 0.05,
        warmup: float = 30.0,
        on_check: Callable[[ClockSim], None] | None = None,
    ) -> SimResult:
        """Run to true time *until*, checking the properties every *check_every* seconds."""
        self._push(check_every, "check", None)
        self._warmup = warmup
        while self.queue:
            t, _, kind, data = heapq.heappop(self.queue)
            if t > until:
                break
            self.now = t
            if kind == "timer":
                i, gen = data
                if gen == self.nodes[i].timer_gen:
                    self.nodes[i].core.handle_timer(self._local(i))
                    self._after_input(i)
            elif kind == "deliver":
                src, dst, msg = data
                node = self.nodes[dst]
                if isinstance(msg, ClockRequest):
                    reply = node.core.handle_request(self._local(dst), msg)
                    self._send(dst, src, reply)
                else:
                    node.core.handle_reply(self._local(dst), msg, sender=f"n{src}")
                self._after_input(dst)
            elif kind == "reference":
                self._set_reference(data)
            elif kind == "check":
                self._check()
                if on_check is not None:
                    on_check(self)
                self._push(t + check_every, "check", None)
        for node in self.nodes:
            self.result.snapshots[node.node_id] = node.core.snapshot(node.clock(self.now))
        return self.result

    def _check(self) -> None:
        ref = self.nodes[self.reference]
        ref_fed = ref.core.federation_time(ref.clock(self.now))
        if ref_fed < ref.last_fed:
            self.result.decreases += 1
        ref.last_fed = ref_fed
        for i, node in enumerate(self.nodes):
            if i == self.reference:
                continue
            snap = node.core.snapshot(self._local(i))
            self.result.checks += 1
            if snap.federation_time < node.last_fed:
                self.result.decreases += 1
                self.result.violations.append(f"t={self.now:.6f} {node.node_id} went back")
            node.last_fed = snap.federation_time
            if not snap.synced:
                continue
            self.result.synced_at.setdefault(node.node_id, self.now)
            if i in self._ref_set_at:
                self.result.sync_delays.append(self.now - self._ref_set_at.pop(i))
            diff = snap.federation_time - ref_fed
            if abs(diff) > snap.error_bound:
                self.result.violations.append(
                    f"t={self.now:.6f} {node.node_id} off by {diff * 1e6:.1f} us, "
                    f"bound {snap.error_bound * 1e6:.1f} us"
                )
            if self.now >= self._warmup:
                self.result.diffs.append(abs(diff))


def percentile(values: list[float], q: float) -> float:
    """The *q*-quantile (0..1) of *values* by the nearest-rank method."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


def random_run(
    seed: int, profile: NetProfile, until: float, *, reference_change: bool = False
) -> tuple[ClockSim, SimResult]:
    """One run with 2-5 nodes (parameters drawn from *seed*), skews up to +-2 s and drifts up to
    200 ppm on every node, optionally handing the reference to another node mid-run."""
    rng = random.Random(seed * 7919 + 1)
    n = rng.randint(2, 5)
    changes: tuple[tuple[float, int], ...] = ()
    if reference_change:
        changes = ((rng.uniform(12.0, 18.0), rng.randrange(1, n)),)
    sim = ClockSim(seed, nodes=n, profile=profile, reference_changes=changes)
    return sim, sim.run(until, check_every=0.1, warmup=until / 2)


# ---------------------------------------------------------------------------------------------
# The properties


@pytest.mark.slow
def test_bound_holds_and_time_never_decreases_over_200_seeds() -> None:
    diffs: list[float] = []
    for seed in range(200):
        sim, r = random_run(seed, LAN, 30.0)
        assert r.violations == [], (seed, r.violations[:3])
        assert r.decreases == 0, seed
        assert r.checks > 0
        followers = {node.node_id for node in sim.nodes[1:]}
        assert set(r.synced_at) == followers, seed  # everyone synced ...
        assert max(r.synced_at.values()) <= 2.0, (seed, r.synced_at)  # ... within 2 s
        diffs += r.diffs
    # DESIGN.md: p99 <= 1 ms required, even on this jittery, lossy LAN.
    assert percentile(diffs, 0.99) <= 1e-3


def test_reference_changes_keep_bound_and_monotonic_time() -> None:
    for seed in range(100):
        sim, r = random_run(seed, LAN, 40.0, reference_change=True)
        assert sim.reference != 0
        assert r.violations == [], (seed, r.violations[:3])
        assert r.decreases == 0, seed
        for i, node in enumerate(sim.nodes):
            snap = r.snapshots[node.node_id]
            assert snap.reference == f"n{sim.reference}"
            assert snap.synced and snap.is_reference == (i == sim.reference)


def test_agreement_at_loopback_delays_meets_the_aim() -> None:
    diffs: list[float] = []
    harsh: list[float] = []
    for seed in range(40):
        _, r = random_run(seed, LOOPBACK, 30.0)
        assert r.violations == [] and r.decreases == 0
        diffs += r.diffs
        _, r = random_run(seed, LOOPBACK_UNIFORM, 30.0)
        assert r.violations == [] and r.decreases == 0
        harsh += r.diffs
    assert percentile(diffs, 0.99) <= 50e-6  # the aim (Ableton Link: 25 us p99 without skew)
    assert percentile(harsh, 0.99) <= 200e-6


def test_a_seed_reproduces_a_run_exactly() -> None:
    a = random_run(11, LAN, 10.0)[1]
    b = random_run(11, LAN, 10.0)[1]
    assert a.diffs == b.diffs and a.snapshots == b.snapshots
    assert random_run(12, LAN, 10.0)[1].snapshots != a.snapshots


def test_bound_holds_along_a_chain_of_references() -> None:
    # n1 follows the root n0, n2 follows n1, n3 follows n2 (a supernode following the registry,
    # its orchestra following it): each bound includes its reference's, so it holds to the root.
    loopback: list[float] = []
    for seed in range(60):
        sim = ClockSim(seed, nodes=4, profile=(LAN, LOOPBACK_UNIFORM)[seed % 2])
        for i in (2, 3):
            sim.nodes[i].core.set_reference(sim.nodes[i].clock(0.0), f"n{i - 1}", is_self=False)
            sim._after_input(i)
        r = sim.run(30.0, check_every=0.1, warmup=15.0)
        assert r.violations == [] and r.decreases == 0, (seed, r.violations[:3])
        assert all(s.synced for s in r.snapshots.values()), seed
        if seed % 2:
            loopback += r.diffs
    # Errors add up along the chain (on the jittery LAN, three hops reach a few ms: see
    # docs/clock.md); on loopback it stays well inside the 1 ms requirement.
    assert percentile(loopback, 0.99) <= 300e-6
