"""Whole-node chaos runs in the simulator: elections and the federation clock under faults.

:func:`run_chaos` starts N :class:`~mesh._nodecore.NodeCore` nodes (membership, elections,
clock) in the deterministic simulator, with skewed and drifting local clocks, then injects
random faults for a while: datagram loss, crashes and restarts, 1 s stalls, partitions. When
the faults end and the network is whole again it measures the time until every running node
sees exactly one conductor (when a conductor candidate runs) and exactly one supernode per
orchestra, the same ones everywhere; and it checks the clock's promises all along: federation
time never decreases on a node and runs within 0.5% of real time outside an announced step
(:class:`~mesh._nodecore.ClockStepped`), and once a node is synced it is within its
``error_bound`` of its reference.

With ``registry=True`` the orchestras are **sites** that only the registry joins, as
``stagemesh node --registry`` runs them: each site its own LAN (a
:class:`~mesh._sim_sites.SiteSimulator`), the sites joined by a WAN link of the seed's own
delay, jitter and loss (:func:`site_link`); every node on the site tier (``wan_profile``:
members talk to their own site only, the sites' supernodes to each other on the ``wan``
timings); no seed crosses sites, the registry (:class:`~mesh._simregistry.SimRegistry`)
proposes the supernodes to each other, tells them which other supernodes they reach directly,
arbitrates the conductor and is the sites' clock where no direct path is. Its faults join the
others: killed and started again (or only started late), reset, restarted on an empty
database, slow (1 s per request), unreachable from a site, and a cut between the sites while
both reach it. Then the run also checks that the registry never lets two conductors stand: a
node that holds the post while the registry is up and reachable from its site (and has been
for ``ARBITER_WINDOW`` seconds, with no reset or restart in that time) is the registry's
holder, or the registry changed holders within that window (the old holder learns it at its
next renewal), so at most one node holds it at every such moment; at the end the registry
records the mesh's conductor, and every synced node is within its error bound of the
registry's time. Agreement is due within :func:`registry_agreement_bound_s` (from the
profiles' timing: a verdict across the WAN takes the ``wan`` suspicion), not the flat
:data:`AGREEMENT_BOUND_S`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import attrs

from mesh._clock import SkewedClock
from mesh._election import CONDUCTOR, ConductorArbiter
from mesh._membership import Snapshot
from mesh._nodecore import ClockStepped, NodeCore
from mesh._profiles import Profile, get_profile
from mesh._sim import LinkModel, SimNode, Simulator
from mesh._sim_sites import SiteSimulator
from mesh._simregistry import REGISTRY, SimRegistry
from mesh._wire import MemberRecord

__all__ = [
    "AGREEMENT_BOUND_S",
    "ARBITER_WINDOW",
    "MAX_RATE_ERROR",
    "ChaosResult",
    "ClockWatch",
    "registry_agreement_bound_s",
    "run_chaos",
    "site_link",
]

MAX_RATE_ERROR = 0.005
"""Federation time runs at 1 +- this of real time outside an announced step."""

ARBITER_WINDOW = 8.0
"""Seconds a holder may take to learn that the registry gave its post away (a renewal every
2 s, a bridge round, a request's time out)."""


SITE_DELAY_S = (0.005, 0.04)
"""One-way delay of the link between sites, drawn per seed (a city's to a continent's path)."""
SITE_LOSS = (0.0, 0.03)
"""Loss of the link between sites, drawn per seed (until the faults end, as the LAN's)."""


def site_link(rng: random.Random) -> LinkModel:
    """The WAN link between the sites of one seed: its own delay (:data:`SITE_DELAY_S`), up to
    half that again of jitter, and its own loss (:data:`SITE_LOSS`)."""
    delay = rng.uniform(*SITE_DELAY_S)
    return LinkModel(loss=rng.uniform(*SITE_LOSS), delay=delay, jitter=rng.uniform(0, delay / 2))


AGREEMENT_BOUND_S = 30.0
"""Seconds from the end of the faults to agreement, one flat LAN group (no registry): a few
LAN failure detections (0.3 s probes, 1-3 s suspicions) and re-announcements in a row."""


def registry_agreement_bound_s(
    nodes: int,
    sites: int = 2,
    *,
    lan: Profile | None = None,
    wan: Profile | None = None,
    interval: float = 2.0,
    timeout: float = 2.0,
    ttl: float = 10.0,
    arbiter: ConductorArbiter | None = None,
) -> float:
    """Seconds from the end of the faults to agreement with sites and the registry
    (``run_chaos(registry=True)``), from the profiles' and the registry bridge's own timing.

    The slowest chain once the network is whole, the registry up and reachable:

    1. **verdicts across the WAN**: a site's supernode (the other sites' only contact) that
       died when nobody of its site was left to tell, is found dead by another site's
       supernode on the ``wan`` timings: one wan probe period plus the wan suspicion's longest
       timeout for the group, plus a wan probe timeout in which the contact, told once more,
       may refute (2 + 32 + 1 s at six nodes, longer than the flat bound on its own).
       A site that vanished whole is found dead member by member (each next best candidate
       of its supernode post becomes the contact once the one before is dead): as many such
       verdicts in a row as the largest site has members (3 at six nodes in two sites: 105 s).
       What runs meanwhile is shorter: the LAN verdicts (probe period plus the LAN suspicion's
       longest: 0.3 + 3 s), the registry's expiry of a dead holder's registration (``ttl``),
       and each bridge learning the registry is back (a timed-out request plus its backed-off
       round: ``timeout + 2 * interval``), and a record whose one crossing was lost (a
       member that joined or restarted while the sites were cut off), which waits for the
       supernodes' next periodic state exchange: at most 1.25 ``wan`` push-pull periods
       (75 s). (Before that exchange there was no such term: the record waited for a push-pull
       that happened to pick a contact, and seed 2328 agreed 133 s after the faults.) A
       suspicion of another site's member that is not a contact, which a node's timer acts on
       only when nobody answered it for two of its longest timeouts, is not on this path
       either: that member's death is its own site's verdict (a LAN verdict that crosses, or
       that the next exchange after a death carries), or the contacts' (the chain above), and
       stands as it comes; one that nobody can answer (an incarnation only one node heard
       of) is acted on within three longest timeouts of its start (96 s);
    2. **a claim**: the post's next holder asks the registry: a refused claim's retry and an
       unanswered one's time-out (``retry + timeout`` of the arbiter), then one bridge round;
    3. **the news crosses**: a supernode that saw a death exchanges state with the other
       site within one LAN reconnect interval (up to 1.25 of it, its jitter).
    """
    lan = lan or get_profile("lan")
    wan = wan or get_profile("wan")
    arbiter = arbiter or ConductorArbiter()
    per_site = -(-nodes // sites)
    across = per_site * (wan.probe_interval + wan.suspicion_bounds(nodes)[1] + wan.probe_timeout)
    meanwhile = max(
        lan.probe_interval + lan.suspicion_bounds(nodes)[1],
        ttl,
        timeout + 2 * interval,
        1.25 * wan.push_pull_period(nodes),
        3 * wan.suspicion_bounds(nodes)[1],
    )
    claim = arbiter.retry + arbiter.timeout + interval
    crossing = 1.25 * lan.reconnect_interval
    return max(across, meanwhile) + claim + crossing


TRACKING_MEMORY_S = 30.0
"""How long after its site top last tracked the registry without a deadband a node's bound
samples are counted apart (``ChaosResult.tracking_violations``): its fit (up to ~40 s of
samples) still holds the top's slewing."""


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
    rate_violations: int = 0
    """Intervals in which a node's federation time ran outside 1 +- 0.5% without a step."""
    steps: int = 0
    """ClockStepped events (lineages meeting)."""
    conductor_violations: int = 0
    """Samples where a node held the conductor against the registry's word (with a registry)."""
    registry_error_s: float = 0.0
    """Largest |federation time - the registry's| among synced nodes at the end."""
    tracking_violations: int = 0
    """Samples outside the error bound of nodes whose site top tracked the registry without a
    deadband then or within :data:`TRACKING_MEMORY_S` (see :func:`_tracking_sites`): reported,
    not a failure (docs/testing.md)."""

    @property
    def ok(self) -> bool:
        """Whether every property held."""
        return self.failure is None


def _core_factory(
    flags: dict[str, tuple[bool, bool]],
    *,
    arbitrated: bool = False,
    wan_profile: Profile | None = None,
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
            arbiter=ConductorArbiter() if arbitrated else None,
            wan_profile=wan_profile,
        )

    return make


def _core(node: SimNode) -> NodeCore:
    core = node.core
    assert isinstance(core, NodeCore)
    return core


class ClockWatch:
    """Watches every node's federation time: never backwards, within 1 +- 0.5% of real time
    between two looks unless the node stepped in between (a :class:`ClockStepped` event: feed
    the simulator's events to :meth:`on_event`)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.backwards = 0
        self.rate_violations = 0
        self.steps: list[tuple[str, ClockStepped, float]] = []  # node id, event, true time
        self.worst_rate = 0.0
        self._last: dict[str, tuple[float, float, NodeCore]] = {}  # id -> (true, fed, core)
        self._stepped: set[str] = set()

    def on_event(self, node: SimNode, event: Any, now: float) -> None:
        """The simulator's event hook."""
        if isinstance(event, ClockStepped):
            self.steps.append((node.node_id, event, now))
            self._stepped.add(node.node_id)

    def look(self) -> None:
        """Read every running node's federation time now."""
        now = self.sim.now
        for node in self.sim.up_nodes():
            core = _core(node)
            fed = core.federation_time(node.local(now))
            last = self._last.get(node.node_id)
            if last is not None and last[2] is core:
                if fed < last[1]:
                    self.backwards += 1
                dt = now - last[0]
                if dt >= 0.05 and node.node_id not in self._stepped:
                    rate = (fed - last[1]) / dt
                    self.worst_rate = max(self.worst_rate, abs(rate - 1.0))
                    if abs(rate - 1.0) > MAX_RATE_ERROR:
                        self.rate_violations += 1
            self._last[node.node_id] = (now, fed, core)
            self._stepped.discard(node.node_id)


class _Arbitration:
    """The registry's word on the conductor, checked while it is up and reachable (see the
    module docstring)."""

    def __init__(self, sim: Simulator, registry: SimRegistry) -> None:
        self.sim = sim
        self.registry = registry
        self.violations = 0
        self.disturbed: dict[str, float] = {}  # orchestra -> when its reach last changed
        self.everyone_disturbed = 0.0
        self.started: dict[str, float] = {}  # node id -> when its current run began
        self.stalled_until: dict[str, float] = {}

    def check(self) -> None:
        now = self.sim.now
        registry = self.registry
        model = registry.model
        quiet_since = max(self.everyone_disturbed, model.time_changed_at)
        if not registry.up or registry.slow or now - quiet_since < ARBITER_WINDOW:
            return
        for node in self.sim.up_nodes():
            site = node.record.orchestra
            if site in registry.cut or now - self.disturbed.get(site, 0.0) < ARBITER_WINDOW:
                continue
            if now - self.started.get(node.node_id, 0.0) < ARBITER_WINDOW:
                continue
            if now - self.stalled_until.get(node.node_id, 0.0) < ARBITER_WINDOW:
                continue
            if not _core(node).election.holds(CONDUCTOR):
                continue
            if model.holder != node.node_id and now - model.holder_changed_at > ARBITER_WINDOW:
                self.violations += 1


def _agreement(
    sim: Simulator,
    orchestras: set[str],
    registry: SimRegistry | None = None,
    *,
    released_ok: bool = False,
    holding: bool = False,
) -> tuple[bool, bool]:
    """(agreed, a conductor is expected) over the running nodes: every one sees exactly the
    running nodes alive (with a registry's sites: live), and the same conductor and
    supernodes, which are running and eligible
    (and, with a registry, the registry records that conductor; with *released_ok*, or
    nobody: a registration that expired while the registry was unreachable releases the post
    until the holder's next renewal takes it again). *holding*: agreement reached is being held
    (with sites, a suspect then counts as live)."""
    up = sim.up_nodes()
    if not up:
        return True, False
    up_ids = {n.node_id for n in up}
    candidates = {n.node_id for n in up if _core(n).membership.me.meta.get("c") is True}
    running_orchestras = {n.record.orchestra for n in up}
    views: set[tuple[str | None, tuple[tuple[str, str | None], ...]]] = set()
    # Agreement is reached when every view holds the running nodes alive, and no suspicion
    # from the faults is left to resolve: a suspicion pending then (a contact suspected while
    # the sites were cut off) may still end in a death a moment later, refuted at once (chaos
    # seeds 2687, 3058 of the registry sweep). Held, with sites, suspect counts as live: a
    # wan probe begun in the faults may end up to a wan probe period (2 s) after them in a
    # suspicion the member refutes at once (a flat LAN's probe period is 0.3 s). A member
    # that is dead is not running: it must be gone from the views all the same.
    live = ("alive", "suspect") if registry is not None and holding else ("alive",)
    for node in up:
        core = _core(node)
        members = core.membership.members()
        alive = {m.node_id for m in members if m.status in live}
        pending = not holding and any(m.status == "suspect" for m in members)
        if alive != up_ids or pending:
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
    recorded = None if registry is None else registry.model.holder
    if (
        registry is not None
        and candidates
        and recorded != conductor
        and not (released_ok and recorded is None)
    ):
        return False, True
    by_id = {n.node_id: n for n in up}
    for orchestra, holder in supernodes:
        if holder is None or holder not in up_ids or by_id[holder].record.orchestra != orchestra:
            return False, bool(candidates)
    return True, bool(candidates)


_FAULTS = ("crash", "restart", "stall", "partition", "heal", "nothing")
_REGISTRY_FAULTS = ("kill", "start", "reset", "wipe", "slow", "fast", "cut", "restore", "split")


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
    timeout_s: float | None = None,
    tail_s: float = 5.0,
    registry: bool = False,
) -> ChaosResult:
    """Run one seed (see the module docstring). *timeout_s*: how long after the faults
    agreement is looked for (default: 60 s; with a registry 1.25 times
    :func:`registry_agreement_bound_s`)."""
    if timeout_s is None:
        timeout_s = 1.25 * registry_agreement_bound_s(nodes, orchestras) if registry else 60.0
    started = time.perf_counter()
    rng = random.Random(seed)
    link = LinkModel(loss=loss, delay=0.0003, jitter=0.0004)
    flags: dict[str, tuple[bool, bool]] = {}
    sim: Simulator
    if registry:
        # Sites: each orchestra its own LAN, the sites joined by a WAN link of this seed's own
        # delay, jitter and loss; every node on the site tier (the wan profile between sites).
        wan = site_link(rng)
        sim = SiteSimulator(seed, link, wan, lan_profile=get_profile("lan"))
        sim.core_factory = _core_factory(flags, arbitrated=True, wan_profile=get_profile("wan"))
    else:
        sim = Simulator(seed, get_profile("lan"), link, core_factory=_core_factory(flags))
    watch = ClockWatch(sim)
    sim.on_event = watch.on_event
    records = []
    for i in range(nodes):
        if isinstance(sim, SiteSimulator):
            record = sim.record_at(i % orchestras, f"n{i}", f"o{i % orchestras}")
        else:
            record = sim.new_record(f"n{i}", f"o{i % orchestras}")
        flags[record.node_id] = (False, i < candidates)
        records.append(record)
    clocks = {
        r.node_id: SkewedClock(rng.uniform(-skew_s, skew_s), rng.uniform(-drift_ppm, drift_ppm))
        for r in records
    }
    reg: SimRegistry | None = None
    arbitration: _Arbitration | None = None
    if registry:
        reg = SimRegistry(
            sim, clock=SkewedClock(rng.uniform(-5, 5), rng.uniform(-50, 50)), direct_paths=True
        )
        arbitration = _Arbitration(sim, reg)
        if rng.random() < 0.3:
            reg.kill()  # down when the nodes start: it comes up during the faults, or after
    # The first node of each orchestra (each site, with a registry) is everyone's seed there.
    firsts: dict[str, MemberRecord] = {}
    for record in records:
        if registry:
            firsts.setdefault(record.orchestra, record)
        else:
            firsts.setdefault("", record)
    for first in firsts.values():
        sim.add_node(first, clock=clocks[first.node_id])

    def seed_of(record: MemberRecord) -> MemberRecord:
        return firsts[record.orchestra if registry else ""]

    def starter(record: MemberRecord) -> Callable[[], None]:
        def start() -> None:
            sim.add_node(record, seeds=[seed_of(record).address], clock=clocks[record.node_id])
            if arbitration is not None:
                arbitration.started[record.node_id] = sim.now

        return start

    for record in records:
        if record not in firsts.values():
            sim.schedule(rng.uniform(0.0, 2.0), starter(record))

    tracked_at: dict[str, float] = {}  # orchestra -> when its top last tracked the registry

    def look() -> None:
        watch.look()
        if arbitration is not None:
            arbitration.check()
            for site in _tracking_sites(sim):
                tracked_at[site] = sim.now

    # Faults.
    crashed: list[SimNode] = []
    sites = sorted({r.orchestra for r in records})
    t = 2.0
    end = 2.0 + fault_s
    while t < end:
        while sim.now < t:
            sim.run_until(min(t, sim.now + 0.1))
            look()
        up = sim.up_nodes()
        kinds = _FAULTS + (_REGISTRY_FAULTS if reg is not None else ())
        action = rng.choice(kinds)
        if action == "crash" and len(up) > 2:
            victim = rng.choice(up)
            sim.crash(victim)
            crashed.append(victim)
        elif action == "restart" and crashed:
            old = crashed.pop(rng.randrange(len(crashed)))
            # It rejoins through a node of its own site (only the registry crosses sites).
            peers = [n for n in up if n.record.orchestra == old.record.orchestra] if reg else up
            peers = peers or up
            sim.restart(old, [rng.choice(peers).address])
            if arbitration is not None:
                arbitration.started[old.node_id] = sim.now
        elif action == "stall" and up:
            victim = rng.choice(up)
            sim.stall(victim, min(1.0, end - t))  # faults end at `end`, stalls too
            if arbitration is not None:
                arbitration.stalled_until[victim.node_id] = sim.now + min(1.0, end - t)
        elif action == "partition" and len(up) > 1:
            members = list(sim.nodes.values())
            rng.shuffle(members)
            cut = rng.randrange(1, len(members))
            sim.partition(members[:cut], members[cut:])
        elif action == "heal":
            sim.heal()
        elif reg is not None and arbitration is not None:
            _registry_fault(action, reg, arbitration, sim, sites, rng)
        t += rng.uniform(0.5, 3.0)
    sim.run_until(end)
    sim.heal()
    sim.link = LinkModel(loss=0.0, delay=link.delay, jitter=link.jitter)
    if isinstance(sim, SiteSimulator):
        sim.wan = attrs.evolve(sim.wan, loss=0.0)  # (the sites' link keeps its delay)
    if reg is not None and arbitration is not None:
        if not reg.up:
            reg.start()
        reg.slow = 0.0
        reg.cut.clear()
        arbitration.everyone_disturbed = sim.now
    names = {r.orchestra for r in records}

    agreed_at: float | None = None
    expected = False
    while sim.now < end + timeout_s:
        sim.run_until(sim.now + 0.1)
        look()
        ok, expected = _agreement(sim, names, reg)
        if ok:
            agreed_at = sim.now
            break

    failure: str | None = None
    violations = 0
    tracking_violations = 0
    max_error = 0.0
    registry_error = 0.0
    if agreed_at is None:
        failure = "no agreement within the timeout"
    else:
        # The tail: agreement must hold, clocks must honour their bounds.
        tail_end = sim.now + tail_s
        while sim.now < tail_end:
            sim.run_until(sim.now + 0.25)
            look()
            ok, _ = _agreement(sim, names, reg, released_ok=True, holding=True)
            if not ok:
                failure = "agreement did not hold after it was reached"
                break
            tracking = {o for o, t in tracked_at.items() if sim.now - t <= TRACKING_MEMORY_S}
            for node in sim.up_nodes():
                snap = _core(node).clock_snapshot(node.local(sim.now))
                slewing = node.record.orchestra in tracking
                if reg is not None and snap.synced:
                    reg_time, reg_lineage = reg.elapsed()
                    if reg_lineage == _core(node).lineage_id:
                        error = abs(snap.federation_time - reg_time)
                        registry_error = max(registry_error, error)
                        if error > snap.error_bound + 1e-9:
                            if slewing:
                                tracking_violations += 1
                            else:
                                violations += 1
                if not snap.synced or snap.is_reference or snap.reference is None:
                    continue
                if snap.samples == 0:
                    # A hand-over (a site's top from the registry to another site's supernode,
                    # a member between supernodes) before the new reference's first answer:
                    # the held bound is against the top of the chain (checked against the
                    # registry above), not yet against the new reference.
                    continue
                ref = next((n for n in sim.up_nodes() if n.node_id == snap.reference), None)
                if ref is None:
                    continue
                ref_fed = _core(ref).federation_time(ref.local(sim.now))
                error = abs(snap.federation_time - ref_fed)
                max_error = max(max_error, error)
                if error > snap.error_bound + 1e-9:
                    if slewing:
                        tracking_violations += 1
                    else:
                        violations += 1
    conductor_violations = 0 if arbitration is None else arbitration.violations
    if failure is None and watch.backwards:
        failure = f"federation time went backwards {watch.backwards} times"
    if failure is None and watch.rate_violations:
        failure = f"federation time ran outside 1 +- 0.5% {watch.rate_violations} times"
    if failure is None and violations:
        failure = f"{violations} clock samples outside their error bound"
    if failure is None and conductor_violations:
        failure = f"{conductor_violations} samples of a conductor the registry did not record"
    return ChaosResult(
        seed=seed,
        nodes=nodes,
        agreement_s=None if agreed_at is None else agreed_at - end,
        conductor_expected=expected,
        backwards=watch.backwards,
        bound_violations=violations,
        max_clock_error_s=max_error,
        trace_hash=sim.trace_hash(),
        wall_s=time.perf_counter() - started,
        failure=failure,
        rate_violations=watch.rate_violations,
        steps=len(watch.steps),
        conductor_violations=conductor_violations,
        registry_error_s=registry_error,
        tracking_violations=tracking_violations,
    )


def _tracking_sites(sim: Simulator) -> set[str]:
    """The orchestras whose site top tracks the registry's time without a deadband (the
    registry is what aligns it with another site: a contact not confirmed direct). Such a top
    slews each new registry estimate in at 0.4%, a rate change its LAN followers' fits do not
    allow for until their next sample; their bounds are counted apart
    (``ChaosResult.tracking_violations``, see docs/testing.md)."""
    sites = set()
    for node in sim.up_nodes():
        core = _core(node)
        # (The node core's own record of its source and mode: read, not changed.)
        source = core._time_source
        if core._top and source is not None and source[0] == REGISTRY and not core._deadband:
            sites.add(node.record.orchestra)
    return sites


def _registry_fault(
    action: str,
    reg: SimRegistry,
    arbitration: _Arbitration,
    sim: Simulator,
    sites: list[str],
    rng: random.Random,
) -> None:
    """Inject one registry fault (see the module docstring)."""
    now = sim.now
    if action == "kill" and reg.up:
        reg.kill()
        arbitration.everyone_disturbed = now
    elif action == "start" and not reg.up:
        reg.start()
        arbitration.everyone_disturbed = now
    elif action == "reset":
        reg.reset()
    elif action == "wipe":
        reg.restart_empty()
        arbitration.everyone_disturbed = now
    elif action == "slow":
        reg.slow = 1.0
        arbitration.everyone_disturbed = now
    elif action == "fast" and reg.slow:
        reg.slow = 0.0
        arbitration.everyone_disturbed = now
    elif action == "cut":
        site = rng.choice(sites)
        reg.cut.add(site)
        arbitration.disturbed[site] = now
    elif action == "restore" and reg.cut:
        site = sorted(reg.cut)[0]
        reg.cut.discard(site)
        arbitration.disturbed[site] = now
    elif action == "split":
        by_site = [[n for n in sim.nodes.values() if n.record.orchestra == s] for s in sites]
        sim.partition(*by_site)
