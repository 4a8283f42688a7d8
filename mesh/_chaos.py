"""Whole-node chaos runs in the simulator: elections and the federation clock under faults.

:func:`run_chaos` starts N :class:`~mesh._nodecore.NodeCore` nodes (membership, elections,
clock) in the deterministic simulator, with skewed and drifting local clocks, then injects
random faults for a while: datagram loss, crashes and restarts, 1 s stalls, partitions. When
the faults end and the network is whole again it measures the time until every running node
sees exactly one conductor (when a conductor candidate runs) and exactly one supernode per
orchestra, the same ones everywhere; and it checks the clock's promises all along: federation
time never decreases on a node, and once a node is synced it is within its ``error_bound`` of
its reference.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import attrs

from mesh._clock import SkewedClock
from mesh._membership import Snapshot
from mesh._nodecore import NodeCore
from mesh._profiles import get_profile
from mesh._sim import LinkModel, SimNode, Simulator
from mesh._wire import MemberRecord

__all__ = ["ChaosResult", "run_chaos"]


@attrs.frozen
class ChaosResult:
    """The outcome of one seed (see :func:`run_chaos`)."""

    seed: int
    nodes: int
    agreement_s: float | None
    """Seconds from the end of the faults until every running node agreed (None: never)."""
    conductor_expected: bool
    backwards: int
    """Times a node's federation time was seen to decrease (must be 0)."""
    bound_violations: int
    """Samples where a synced node was further from its reference than its error bound."""
    max_clock_error_s: float
    """Largest |federation time - reference's| among synced nodes after agreement."""
    trace_hash: str
    wall_s: float
    failure: str | None

    @property
    def ok(self) -> bool:
        """Whether every property held."""
        return self.failure is None


def _core_factory(
    flags: dict[str, tuple[bool, bool]],
) -> Any:
    profile = get_profile("lan")

    def make(
        me: MemberRecord, now: float, rng: random.Random, snapshot: Snapshot | None
    ) -> NodeCore:
        supernode, conductor = flags[me.node_id]
        return NodeCore(
            me,
            profile,
            now=now,
            rng=rng,
            snapshot=snapshot,
            supernode=supernode,
            conductor=conductor,
            joined_at=now,
        )

    return make


def _core(node: SimNode) -> NodeCore:
    core = node.core
    assert isinstance(core, NodeCore)
    return core


def _agreement(sim: Simulator, orchestras: set[str]) -> tuple[bool, bool]:
    """(agreed, a conductor is expected) over the running nodes: every one sees exactly the
    running nodes alive, and the same conductor and supernodes, which are running and eligible."""
    up = sim.up_nodes()
    if not up:
        return True, False
    up_ids = {n.node_id for n in up}
    candidates = {n.node_id for n in up if _core(n).membership.me.meta.get("c") is True}
    running_orchestras = {n.record.orchestra for n in up}
    views: set[tuple[str | None, tuple[tuple[str, str | None], ...]]] = set()
    for node in up:
        core = _core(node)
        alive = {m.node_id for m in core.membership.members() if m.status == "alive"}
        if alive != up_ids:
            return False, bool(candidates)  # membership has not healed yet
        posts = tuple(sorted((o, core.supernode(o)) for o in running_orchestras))
        views.add((core.conductor(), posts))
    if len(views) != 1:
        return False, bool(candidates)
    ((conductor, supernodes),) = views
    if candidates and conductor not in candidates:
        return False, True
    if not candidates and conductor is not None:
        return False, False
    by_id = {n.node_id: n for n in up}
    for orchestra, holder in supernodes:
        if holder is None or holder not in up_ids or by_id[holder].record.orchestra != orchestra:
            return False, bool(candidates)
    return True, bool(candidates)


def run_chaos(
    seed: int,
    nodes: int = 6,
    orchestras: int = 2,
    candidates: int = 2,
    *,
    fault_s: float = 20.0,
    loss: float = 0.05,
    skew_s: float = 2.0,
    drift_ppm: float = 200.0,
    timeout_s: float = 60.0,
    tail_s: float = 5.0,
) -> ChaosResult:
    """Run one seed (see the module docstring)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    link = LinkModel(loss=loss, delay=0.0003, jitter=0.0004)
    flags: dict[str, tuple[bool, bool]] = {}
    sim = Simulator(seed, get_profile("lan"), link, core_factory=_core_factory(flags))
    records = []
    for i in range(nodes):
        record = sim.new_record(f"n{i}", f"o{i % orchestras}")
        flags[record.node_id] = (False, i < candidates)
        records.append(record)
    clocks = {
        r.node_id: SkewedClock(rng.uniform(-skew_s, skew_s), rng.uniform(-drift_ppm, drift_ppm))
        for r in records
    }
    first = records[0]
    sim.add_node(first, clock=clocks[first.node_id])

    def starter(record: MemberRecord) -> Callable[[], None]:
        def start() -> None:
            sim.add_node(record, seeds=[first.address], clock=clocks[record.node_id])

        return start

    for record in records[1:]:
        sim.schedule(rng.uniform(0.0, 2.0), starter(record))
    last_fed: dict[str, float] = {}
    backwards = 0

    def watch_clocks() -> None:
        nonlocal backwards
        for node in sim.up_nodes():
            fed = _core(node).federation_time(node.local(sim.now))
            if fed < last_fed.get(node.node_id, -1e300):
                backwards += 1
            last_fed[node.node_id] = fed

    # Faults.
    crashed: list[SimNode] = []
    t = 2.0
    end = 2.0 + fault_s
    while t < end:
        sim.run_until(t)
        watch_clocks()
        up = sim.up_nodes()
        action = rng.choice(("crash", "restart", "stall", "partition", "heal", "nothing"))
        if action == "crash" and len(up) > 2:
            victim = rng.choice(up)
            sim.crash(victim)
            crashed.append(victim)
        elif action == "restart" and crashed:
            old = crashed.pop(rng.randrange(len(crashed)))
            last_fed.pop(old.node_id, None)  # a restarted process starts its clock afresh
            sim.restart(old, [rng.choice(up).address])
        elif action == "stall" and up:
            sim.stall(rng.choice(up), min(1.0, end - t))  # faults end at `end`, stalls too
        elif action == "partition" and len(up) > 1:
            members = list(sim.nodes.values())
            rng.shuffle(members)
            cut = rng.randrange(1, len(members))
            sim.partition(members[:cut], members[cut:])
        elif action == "heal":
            sim.heal()
        t += rng.uniform(0.5, 3.0)
    sim.run_until(end)
    sim.heal()
    sim.link = LinkModel(loss=0.0, delay=link.delay, jitter=link.jitter)
    names = {r.orchestra for r in records}

    agreed_at: float | None = None
    expected = False
    while sim.now < end + timeout_s:
        sim.run_until(sim.now + 0.1)
        watch_clocks()
        ok, expected = _agreement(sim, names)
        if ok:
            agreed_at = sim.now
            break

    failure: str | None = None
    violations = 0
    max_error = 0.0
    if agreed_at is None:
        failure = "no agreement within the timeout"
    else:
        # The tail: agreement must hold, clocks must honour their bounds.
        tail_end = sim.now + tail_s
        while sim.now < tail_end:
            sim.run_until(sim.now + 0.25)
            watch_clocks()
            ok, _ = _agreement(sim, names)
            if not ok:
                failure = "agreement did not hold after it was reached"
                break
            for node in sim.up_nodes():
                snap = _core(node).clock_snapshot(node.local(sim.now))
                if not snap.synced or snap.is_reference or snap.reference is None:
                    continue
                ref = next((n for n in sim.up_nodes() if n.node_id == snap.reference), None)
                if ref is None:
                    continue
                ref_fed = _core(ref).federation_time(ref.local(sim.now))
                error = abs(snap.federation_time - ref_fed)
                max_error = max(max_error, error)
                if error > snap.error_bound + 1e-9:
                    violations += 1
    if failure is None and backwards:
        failure = f"federation time went backwards {backwards} times"
    if failure is None and violations:
        failure = f"{violations} clock samples outside their error bound"
    return ChaosResult(
        seed=seed,
        nodes=nodes,
        agreement_s=None if agreed_at is None else agreed_at - end,
        conductor_expected=expected,
        backwards=backwards,
        bound_violations=violations,
        max_clock_error_s=max_error,
        trace_hash=sim.trace_hash(),
        wall_s=time.perf_counter() - started,
        failure=failure,
    )
