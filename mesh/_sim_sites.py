"""A federation of sites in the simulator: each site its own LAN and orchestra, the sites joined
only through their supernodes.

The model (what a federation of many sites is, in the simulation):

- Every site is one orchestra on its own LAN. Its members run the membership core on the LAN
  profile and know the members of their orchestra only (they start from one shared snapshot of
  the site).
- Every site's **supernode** (its first member: in a converged site the election's "earliest
  join" rule picks it) also runs a second membership core, the **supernode tier**, on the WAN
  profile, whose members are the supernodes of all sites, at the supernode's address and the
  next port (:data:`TIER_PORT_OFFSET`). Its record in the tier carries its orchestra's
  **summary** in its metadata, ``{"n": live members}``; whenever its own orchestra changes (a
  member joins, dies or leaves) the supernode publishes the new summary (a new incarnation of
  its tier record, gossiped across the tier).
- The link model is site-aware: :class:`SiteSimulator` gives traffic inside a site the LAN link
  and traffic between sites (only ever between supernodes) the WAN link.

So "known by everyone who should know it": a new member is known by every member of its
orchestra (and knows them all), and by every other site's supernode as its orchestra's new
summary. A member of one orchestra holds and sends what its orchestra needs, whatever the number
of other sites; a supernode holds one tier record per site besides.
"""

from __future__ import annotations

import gc
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from mesh._membership import MemberEvent, Membership, Snapshot
from mesh._profiles import Profile, get_profile
from mesh._sim import LinkModel, SimCore, SimNode, Simulator
from mesh._wire import Address, MemberRecord

__all__ = [
    "LAN_LINK",
    "TIER_PORT_OFFSET",
    "WAN_LINK",
    "FederationResult",
    "Site",
    "SiteFederation",
    "SiteSimulator",
    "run_federation_join",
]

TIER_PORT_OFFSET = 1
"""The supernode tier's core listens on the supernode's gossip port plus this."""

LAN_LINK = LinkModel()
"""Inside a site: the simulator's default LAN (0.5 ms plus up to 1 ms of jitter)."""

WAN_LINK = LinkModel(delay=0.04, jitter=0.04)
"""Between sites: 40 ms plus up to 40 ms of jitter (one way), a continent's internet path."""

SETTLE_S = 0.3
"""How long the converged federation runs before the join: one LAN probe period, after which
every member's timers are in their steady rhythm."""

MEASURE_S = 1.0
"""What the nodes send is measured from the join for at least this long (longer if the join takes
longer to be known): ordinary members over the sites other than the joiner's (their steady
traffic), supernodes over all sites (the summary's gossip included)."""

SUMMARY_KEY = "n"
"""The tier metadata key of a supernode's orchestra summary: its live members."""


class SiteSimulator(Simulator):
    """A :class:`~mesh._sim.Simulator` whose network knows sites: the LAN link inside a site,
    the WAN link between two sites. Cores at the tier port run the WAN profile."""

    def __init__(
        self,
        seed: int,
        lan: LinkModel = LAN_LINK,
        wan: LinkModel = WAN_LINK,
        *,
        lan_profile: Profile | None = None,
        wan_profile: Profile | None = None,
    ) -> None:
        super().__init__(seed, lan_profile or get_profile("lan"), lan)
        self.wan = wan
        self.wan_profile = wan_profile or get_profile("wan")
        self.site_of: dict[Address, int] = {}
        """Every address's site."""
        self.tier_addresses: set[Address] = set()
        self._sites_link = type(self).link_between is SiteSimulator.link_between
        self.core_factory = self._site_factory

    def _site_factory(
        self, me: MemberRecord, now: float, rng: random.Random, snapshot: Snapshot | None
    ) -> SimCore:
        tier = me.address in self.tier_addresses
        profile = self.wan_profile if tier else self.profile
        return Membership(me, profile, now=now, rng=rng, snapshot=snapshot)

    def link_between(self, src: Address, dest: Address) -> LinkModel:
        """The LAN link inside a site, the WAN link between sites (an unknown address is
        treated as another site)."""
        site = self.site_of.get(src)
        return self.link if site is not None and site == self.site_of.get(dest) else self.wan

    def site_at(self, address: Address) -> int | None:
        """The site of *address* (None if it has none)."""
        return self.site_of.get(address)

    def _link(self, node: SimNode, dest: Address, target: SimNode | None) -> LinkModel:
        # As link_between, from the sites the two nodes carry (no look-up by address: this is
        # every datagram's path). Without a node at *dest* the datagram is dropped whatever
        # the link, so "another site" is as good an answer as any there. A subclass with its
        # own link_between (NATs between sites...) is asked as it asks.
        if not self._sites_link:
            return self.link_between(node.address, dest)
        site = node.site
        return (
            self.link
            if site is not None and target is not None and site == target.site
            else self.wan
        )

    def record_at(self, site: int, name: str, orchestra: str) -> MemberRecord:
        """A fresh member record with a new id and the next free virtual host, at *site*."""
        record = self.new_record(name, orchestra)
        self.site_of[record.address] = site
        return record


@attrs.define(eq=False)
class Site:
    """One site: its orchestra's members (the supernode first) and the supernode's tier core."""

    index: int
    orchestra: str
    members: list[SimNode]
    tier: SimNode

    @property
    def supernode(self) -> SimNode:
        """The site's supernode (its orchestra-side core)."""
        return self.members[0]


EventWatcher = Callable[[SimNode, Any, float], None]


class SiteFederation:
    """*sites* converged sites of *per_site* members each in one :class:`SiteSimulator`.

    Every supernode republishes its orchestra's summary in the tier whenever its orchestra
    changes; ``watchers`` see every event of every core (LAN and tier) with the virtual time.
    """

    def __init__(self, sim: SiteSimulator, sites: int, per_site: int) -> None:
        if sites < 1 or per_site < 2:
            raise ValueError("a federation needs at least 1 site of at least 2 members")
        self.sim = sim
        self.watchers: list[EventWatcher] = []
        self._by_supernode: dict[Address, Site] = {}
        sim.on_event = self._on_event
        width = len(str(sites - 1))
        plans: list[tuple[str, list[MemberRecord]]] = []
        tier_records: list[MemberRecord] = []
        for s in range(sites):
            orchestra = f"s{s:0{width}d}"
            records = [sim.record_at(s, f"m{i}", orchestra) for i in range(per_site)]
            first = records[0]
            host, port = first.address
            tier_address = (host, port + TIER_PORT_OFFSET)
            sim.site_of[tier_address] = s
            sim.tier_addresses.add(tier_address)
            tier_records.append(
                MemberRecord(
                    first.node_id,
                    first.name,
                    orchestra,
                    tier_address,
                    0,
                    {SUMMARY_KEY: per_site},
                )
            )
            plans.append((orchestra, records))
        tier_snapshot = Snapshot.of(tier_records)
        self.sites: list[Site] = []
        for s, (orchestra, records) in enumerate(plans):
            snapshot = Snapshot.of(records)
            members = [sim.add_node(r, snapshot=snapshot) for r in records]
            tier = sim.add_node(tier_records[s], snapshot=tier_snapshot)
            site = Site(s, orchestra, members, tier)
            self.sites.append(site)
            self._by_supernode[members[0].address] = site

    def join(self, site: Site, seed: SimNode, name: str = "joiner") -> SimNode:
        """Start a new member of *site* now, joining through *seed* (a member of the site)."""
        record = self.sim.record_at(site.index, name, site.orchestra)
        node = self.sim.add_node(record, seeds=[seed.address])
        site.members.append(node)
        return node

    def _on_event(self, node: SimNode, event: Any, now: float) -> None:
        if type(event) is MemberEvent and event.kind in ("joined", "dead", "left"):
            site = self._by_supernode.get(node.address)
            if site is not None:
                self._publish_summary(site)
        for watcher in self.watchers:
            watcher(node, event, now)

    def _publish_summary(self, site: Site) -> None:
        """The supernode's orchestra changed: its tier record gets the new summary."""
        lan = site.supernode.core
        tier = site.tier.core
        assert isinstance(lan, Membership) and isinstance(tier, Membership)
        summary = {SUMMARY_KEY: lan.live_count()}
        self.sim.call_node(site.tier, 0.0, lambda now: tier.update_meta(now, summary))


@contextmanager
def collector_off() -> Iterator[None]:
    """Run without Python's cyclic garbage collector (as it was on exit). Every full
    collection walks all the cores, millions of objects at 100,000 nodes: 40% of the CPU time
    of a 30,000-node run went there. The simulation makes no cycles worth collecting: the peak
    memory of that run is the same with the collector off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # Everything made meanwhile counts as young: the first collection after enabling
        # would walk all of it (a second at 100,000 nodes). Freezing and thawing moves it to
        # the oldest generation instead, where a later full collection still finds any cycle.
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


def records_held(node: SimNode) -> int:
    """How many member records *node*'s core holds (itself, live members and tombstones)."""
    core = node.core
    assert isinstance(core, Membership)
    return core.live_count() + core.statistics().members_dead


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@attrs.frozen
class FederationResult:
    """The figures of one federation join (``stagemesh sim --sites``); :meth:`as_dict` gives
    the keys ``--json`` prints."""

    scenario: str
    nodes: int
    """Orchestra members before the join (supernodes included, their tier cores not)."""
    sites: int
    seed: int
    loss: float
    join_site_s: float | None
    """Until every member of the joiner's orchestra knows it and it knows them all."""
    join_all_s: float | None
    """Until, besides, every other site's supernode holds the orchestra's new summary."""
    records_per_member: float
    """Member records an ordinary member holds (mean)."""
    records_per_supernode: float
    """Member records a supernode holds in its two cores (mean)."""
    bytes_per_member_s: float
    """What an ordinary member of another site than the joiner's sends per second (mean, IP
    and UDP headers counted)."""
    bytes_per_supernode_s: float
    """What a supernode sends per second with its two cores (mean; the summary's gossip
    included)."""
    msgs_per_node_s: float
    """Datagrams and stream openings sent per second, all cores together, per orchestra member
    (the joiner's site and the tier included)."""
    trace_hash: str
    wall_s: float
    join_wall_s: float
    """Wall time from the join until everyone who should know it does."""
    peak_rss_mib: float
    sim_s: float
    converged: bool

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of ``stagemesh sim --sites ... --json`` (without ``converged``)."""
        return attrs.asdict(self, filter=lambda field, _: field.name != "converged")


def run_federation_join(
    nodes: int,
    sites: int,
    seed: int = 1,
    loss: float = 0.0,
    *,
    lan: LinkModel | None = None,
    wan: LinkModel | None = None,
    settle_s: float = SETTLE_S,
    measure_s: float = MEASURE_S,
    timeout_s: float = 120.0,
) -> FederationResult:
    """Run the federation join: *nodes* members in *sites* sites of equal size (the first
    ``nodes % sites`` sites have one more), settle for *settle_s*, then a new member joins a
    random site through a random member of it. What the nodes send is measured from the join
    for *measure_s*, or until the join is known by all if that is later (see
    :data:`MEASURE_S`). *loss* applies to the LAN and the WAN link alike (unless *lan* / *wan*
    give whole models)."""
    if sites < 1 or nodes < 2 * sites:
        raise ValueError("a federation needs at least 1 site and 2 members per site")
    started = time.perf_counter()
    with collector_off():
        lan = lan or attrs.evolve(LAN_LINK, loss=loss)
        wan = wan or attrs.evolve(WAN_LINK, loss=loss)
        sim = SiteSimulator(seed, lan, wan)
        per_site, extra = divmod(nodes, sites)
        federation = SiteFederation(sim, sites, per_site)
        for site in federation.sites[:extra]:
            # The extra members join like any member, and settle before the figures start.
            federation.join(site, site.supernode, name=f"m{per_site}")
        return _join(sim, federation, nodes, started, settle_s, measure_s, timeout_s)


def _join(
    sim: SiteSimulator,
    federation: SiteFederation,
    nodes: int,
    started: float,
    settle_s: float,
    measure_s: float,
    timeout_s: float,
) -> FederationResult:
    sites = len(federation.sites)
    sim.run_until(settle_s)
    before = {a: (n.sent_bytes, n.sent_messages) for a, n in sim.nodes.items()}
    t0 = sim.now
    join_started = time.perf_counter()

    site = sim.rng.choice(federation.sites)
    joined = _JoinWatch(federation, site, sim.rng.choice(site.members))
    converged = False
    limit = t0 + timeout_s
    while sim.now < limit:
        sim.run_until(min(limit, sim.now + 0.01))
        if joined.site_s is None and joined.site_knows():
            joined.site_s = sim.now - t0
        if joined.site_s is not None and len(joined.supernodes_knew) >= sites - 1:
            converged = True
            break
    join_all_s = sim.now - t0 if converged else None
    join_wall = time.perf_counter() - join_started
    sim.run_until(t0 + measure_s)
    window = sim.now - t0

    every = federation.sites
    plain = [n for s in every for n in s.members[1:]]
    quiet = [n for s in every if s is not site for n in s.members[1:]]
    sent = {a: n.sent_bytes - before[a][0] for a, n in sim.nodes.items() if a in before}
    member_bytes = sum(sent[n.address] for n in quiet)
    super_bytes = sum(sent[s.supernode.address] + sent[s.tier.address] for s in every)
    msgs = sum(n.sent_messages - before[a][1] for a, n in sim.nodes.items() if a in before)
    return FederationResult(
        scenario="join",
        nodes=nodes,
        sites=sites,
        seed=sim.seed,
        loss=sim.link.loss,
        join_site_s=joined.site_s,
        join_all_s=join_all_s,
        records_per_member=sum(records_held(n) for n in plain) / len(plain),
        records_per_supernode=sum(records_held(s.supernode) + records_held(s.tier) for s in every)
        / len(every),
        bytes_per_member_s=member_bytes / max(len(quiet), 1) / window,
        bytes_per_supernode_s=super_bytes / len(every) / window,
        msgs_per_node_s=msgs / nodes / window,
        trace_hash=sim.trace_hash(),
        wall_s=time.perf_counter() - started,
        join_wall_s=join_wall,
        peak_rss_mib=peak_rss_mib(),
        sim_s=sim.now,
        converged=converged,
    )


class _JoinWatch:
    """A new member joins *site* through *seed* now; this watches who learns it: the members
    of its orchestra (``joined``), the other supernodes (its supernode's new summary)."""

    def __init__(self, federation: SiteFederation, site: Site, seed: SimNode) -> None:
        self.size = len(site.members)
        self.joiner = federation.join(site, seed)
        self.supernode_id = site.supernode.node_id
        self.members_knew: set[str] = set()
        self.supernodes_knew: set[str] = set()
        self.site_s: float | None = None
        federation.watchers.append(self._on_event)

    def _on_event(self, node: SimNode, event: Any, now: float) -> None:
        if type(event) is not MemberEvent:
            return
        member = event.member
        if event.kind == "joined" and member.node_id == self.joiner.node_id:
            self.members_knew.add(node.node_id)
        elif (
            event.kind == "updated"
            and member.node_id == self.supernode_id
            and member.meta.get(SUMMARY_KEY) == self.size + 1
        ):
            self.supernodes_knew.add(node.node_id)

    def site_knows(self) -> bool:
        """Every member of the orchestra knows the joiner, and it knows them all."""
        core = self.joiner.core
        assert isinstance(core, Membership)
        return len(self.members_knew) >= self.size and core.live_count() == self.size + 1
