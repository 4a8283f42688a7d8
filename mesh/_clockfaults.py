"""Federation time through every registry fault, in the simulator: one scenario per fault.

:func:`run_registry_fault` starts two sites joined only by a simulated registry
(:class:`~mesh._simregistry.SimRegistry`): site ``a`` of 3 nodes, site ``b`` of 2 nodes that
start a few seconds later, one conductor candidate each, skewed and drifting clocks, a lossy
LAN; then injects one fault of the registry and checks the promises of the federation clock on
every node, every 50 ms, for a minute:

1. **LAN first**: every orchestra is synced (every node ``synced``, their federation times
   within ``LAN_BOUND`` of each other) within 2 s of its last node's start, and stays within
   ``LAN_BOUND`` whatever the registry does;
2. **rate**: federation time never decreases and runs at 1 +- 0.5% of real time outside an
   announced step;
3. **steps only when lineages meet**: at the start (a node joining, a group that formed before
   it met an older lineage), and later only when two lineages meet (the ``late`` registry joins
   sites that kept time apart): then every node of the younger site steps once, and the older
   site never; the nodes of one lineage step to another at the same federation time;
4. **the registry learns the federation's time**: after a reset or an empty restart, the
   registry's time is the federation's again (within ``REGISTRY_BOUND``) within a few seconds;
5. **cross-site bound**: with the registry up, every synced node is within its ``error_bound``
   of the registry's time.

The faults (:data:`FAULTS`): ``never`` (never reachable), ``late`` (down until 20 s), ``slow``
(1 s per request from 15 to 40 s), ``flapping`` (down and up every 1-3 s from 10 to 40 s),
``killed`` (down from 15 to 35 s), ``emptied`` (killed at 18 s, back on an empty database at
20 s), ``reset`` (an organiser resets the federation at 20 s), ``split`` (the sites cannot
reach each other from 15 to 40 s, both still reach the registry).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import attrs

from mesh._chaos import ClockWatch, _core, _core_factory
from mesh._clock import SkewedClock
from mesh._profiles import get_profile
from mesh._sim import LinkModel, SimNode, Simulator
from mesh._simregistry import SimRegistry
from mesh._wire import MemberRecord

__all__ = ["FAULTS", "LAN_BOUND", "REGISTRY_BOUND", "FaultResult", "run_registry_fault"]

FAULTS = ("never", "late", "slow", "flapping", "killed", "emptied", "reset", "split")
LAN_BOUND = 0.001
"""Seconds within which the nodes of one orchestra agree (the LAN bound asserted)."""
REGISTRY_BOUND = 0.005
"""Seconds within which the registry's time is the federation's after a reset."""
_SYNC_WITHIN = 2.0
_DURATION = 60.0
_LOOK = 0.05


@attrs.frozen
class FaultResult:
    """What one scenario run measured (see :func:`run_registry_fault`)."""

    fault: str
    seed: int
    failure: str | None
    sync_s: float
    """Worst time from an orchestra's last start to it being synced within the LAN bound."""
    lan_spread_s: float
    """Worst spread of federation time within an orchestra, after it synced."""
    cross_site_s: float
    """Worst spread between the two sites once they share a lineage."""
    registry_error_s: float
    """Worst |federation time - registry's| of a synced node while the registry was followed."""
    worst_rate: float
    """Worst |rate - 1| between two looks, outside steps."""
    steps: int
    """ClockStepped events after the nodes' starts (lineages meeting later)."""
    registry_young_s: float
    """How long the registry's time was not the federation's after a reset or empty restart."""
    wall_s: float

    @property
    def ok(self) -> bool:
        """Whether every property held."""
        return self.failure is None


def _starter(
    sim: Simulator, record: MemberRecord, clock: SkewedClock, first: dict[str, SimNode]
) -> Callable[[], None]:
    """Start *record*'s node, joining through the first node of its site (none for the first)."""

    def start() -> None:
        site = record.orchestra
        seeds = [first[site].address] if site in first else []
        first.setdefault(site, sim.add_node(record, seeds=seeds, clock=clock))

    return start


def _schedule_fault(fault: str, reg: SimRegistry, sim: Simulator, rng: random.Random) -> None:
    if fault in ("never", "late"):
        reg.kill()
        if fault == "late":
            sim.schedule(20.0, reg.start)
    elif fault == "slow":
        sim.schedule(15.0, lambda: setattr(reg, "slow", 1.0))
        sim.schedule(40.0, lambda: setattr(reg, "slow", 0.0))
    elif fault == "flapping":
        t, up = 10.0, True
        while t < 40.0:
            sim.schedule(t, reg.kill if up else reg.start)
            up = not up
            t += rng.uniform(1.0, 3.0)
        sim.schedule(40.0, reg.start)
    elif fault == "killed":
        sim.schedule(15.0, reg.kill)
        sim.schedule(35.0, reg.start)
    elif fault == "emptied":
        sim.schedule(18.0, reg.kill)
        sim.schedule(20.0, reg.restart_empty)
    elif fault == "reset":
        sim.schedule(20.0, reg.reset)
    elif fault != "split":
        raise ValueError(f"unknown registry fault {fault!r}; one of {', '.join(FAULTS)}")


def run_registry_fault(fault: str, seed: int) -> FaultResult:
    """Run one seed of one fault's scenario (see the module docstring)."""
    started = time.perf_counter()
    rng = random.Random(f"{fault}-{seed}")
    flags: dict[str, tuple[bool, bool]] = {}
    link = LinkModel(loss=0.01, delay=0.0003, jitter=0.0004)
    sim = Simulator(
        rng.getrandbits(32),
        get_profile("lan"),
        link,
        core_factory=_core_factory(flags, arbitrated=True),
    )
    watch = ClockWatch(sim)
    sim.on_event = watch.on_event
    reg = SimRegistry(sim, clock=SkewedClock(rng.uniform(-5, 5), rng.uniform(-50, 50)))
    sites = {"a": 3, "b": 2}
    starts: dict[str, float] = {}
    site_of: dict[str, str] = {}
    first: dict[str, SimNode] = {}
    b_start = rng.uniform(2.0, 5.0)
    for site, count in sites.items():
        for i in range(count):
            record = sim.new_record(f"{site}{i}", site)
            flags[record.node_id] = (False, i == 0)
            site_of[record.node_id] = site
            when = (0.0 if site == "a" else b_start) + (0.0 if i == 0 else rng.uniform(0.1, 0.8))
            clock = SkewedClock(rng.uniform(-2.0, 2.0), rng.uniform(-100.0, 100.0))
            starts[record.node_id] = when

            sim.schedule(when, _starter(sim, record, clock, first))
    _schedule_fault(fault, reg, sim, rng)
    if fault == "split":

        def split() -> None:
            nodes = list(sim.nodes.values())
            sim.partition([n for n in nodes if site_of[n.node_id] == "a"],
                          [n for n in nodes if site_of[n.node_id] == "b"])  # fmt: skip

        sim.schedule(15.0, split)
        sim.schedule(40.0, sim.heal)

    failure: str | None = None
    synced_at: dict[str, float] = {}
    site_ready = {s: max(t for n, t in starts.items() if site_of[n] == s) for s in sites}
    lan_spread = cross_site = registry_error = 0.0
    young_since: float | None = None
    young_total = 0.0
    reset_at = 20.0 if fault in ("emptied", "reset") else None

    looks = 0

    def fail(message: str) -> None:
        nonlocal failure
        if failure is None:
            failure = f"t={sim.now:.2f}: {message}"

    while sim.now < _DURATION:
        sim.run_until(sim.now + _LOOK)
        watch.look()
        now = sim.now
        up = sim.up_nodes()
        feds = {n.node_id: _core(n).federation_time(n.local(now)) for n in up}
        looks += 1
        if len(synced_at) == len(sites) and looks % 5:
            snaps = {}  # (the bounds are checked every 0.25 s once the orchestras synced)
        else:
            snaps = {n.node_id: _core(n).clock_snapshot(n.local(now)) for n in up}
        # 1. LAN first.
        for site in sites:
            members = [n for n in up if site_of[n.node_id] == site]
            if len(members) < sites[site]:
                continue
            times = [feds[n.node_id] for n in members]
            spread = max(times) - min(times)
            if site not in synced_at:
                tops = sum(snaps[n.node_id].is_reference for n in members)
                followers = all(snaps[n.node_id].synced for n in members)
                if followers and tops <= 1 and spread <= LAN_BOUND:
                    synced_at[site] = now
                elif now - site_ready[site] > _SYNC_WITHIN:
                    fail(f"orchestra {site} not synced within {_SYNC_WITHIN} s of its start")
            else:
                lan_spread = max(lan_spread, spread)
                if spread > LAN_BOUND:
                    fail(f"orchestra {site} {spread * 1e3:.3f} ms apart")
        lineages = {_core(n).lineage_id for n in up}
        if len(up) == sum(sites.values()) and len(lineages) == 1 and len(synced_at) == len(sites):
            cross_site = max(cross_site, max(feds.values()) - min(feds.values()))
        # 4. The registry's time is the federation's again after a reset or empty restart.
        reg_time, reg_lineage = reg.elapsed()
        if reset_at is not None and now > reset_at and reg.up:
            if reg_lineage not in lineages:
                if young_since is None:
                    young_since = now
            elif young_since is not None:
                young_total += now - young_since
                young_since = None
        # 5. Honest bounds against the registry's time.
        if reg.up and not reg.slow:
            for node in up:
                snap = snaps.get(node.node_id)
                if snap is not None and snap.synced and _core(node).lineage_id == reg_lineage:
                    error = abs(feds[node.node_id] - reg_time)
                    if now > 45.0:
                        registry_error = max(registry_error, error)
                    if error > snap.error_bound + 1e-9:
                        fail(f"{error * 1e3:.3f} ms from the registry, bound {snap.error_bound}")
    if young_since is not None:
        young_total += sim.now - young_since
    # 2. Rate and monotonic time.
    if watch.backwards:
        fail(f"federation time went backwards {watch.backwards} times")
    if watch.rate_violations:
        fail(f"federation time ran outside 1 +- 0.5% ({watch.worst_rate:.4f})")
    # 3. Steps only when lineages meet: at the start (nodes joining, groups that formed before
    #    they met an older lineage), later only the younger site of "late", all its nodes
    #    together; and every group step at one moment.
    settled = max(starts.values()) + 5.0
    late_steps = [(n, s, t) for n, s, t in watch.steps if t > settled]
    groups: dict[tuple[str, str], list[float]] = {}
    for _, step, _ in watch.steps:
        groups.setdefault((step.old_lineage, step.new_lineage), []).append(step.federation_time)
    for (old, new), moments in groups.items():
        if max(moments) - min(moments) > LAN_BOUND:
            fail(f"the nodes of lineage {old} stepped to {new} at different moments")
    if late_steps:
        stepping_sites = {site_of[n] for n, _, _ in late_steps}
        if fault != "late" or stepping_sites != {"b"}:
            fail(f"steps after the start: {[(site_of[n], s.size) for n, s, _ in late_steps]}")
        elif sorted(n for n, _, _ in late_steps) != sorted(n for n in starts if site_of[n] == "b"):
            fail("not every node of the younger site stepped exactly once")
    # 4. (continued)
    if reset_at is not None:
        reg_time, reg_lineage = reg.elapsed()
        references = [
            n for n in sim.up_nodes() if _core(n).clock_snapshot(n.local(sim.now)).is_reference
        ]
        for top in references:
            gap = abs(_core(top).federation_time(top.local(sim.now)) - reg_time)
            if gap > REGISTRY_BOUND:
                fail(f"the registry's time is {gap * 1e3:.3f} ms from the federation's")
        if young_total > 5.0:
            fail(f"the registry kept its own young time for {young_total:.1f} s")
    return FaultResult(
        fault=fault,
        seed=seed,
        failure=failure,
        sync_s=max((synced_at.get(s, _DURATION) - site_ready[s] for s in sites), default=_DURATION),
        lan_spread_s=lan_spread,
        cross_site_s=cross_site,
        registry_error_s=registry_error,
        worst_rate=watch.worst_rate,
        steps=len(late_steps),
        registry_young_s=young_total,
        wall_s=time.perf_counter() - started,
    )
