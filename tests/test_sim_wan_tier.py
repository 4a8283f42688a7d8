"""Two sites of several nodes each over a 200 ms, 2 % loss link, in the deterministic
simulator, with whole-node cores (membership, elections, clock): the site tier
(``NodeCore(wan_profile=...)``, what a node with a registry runs) against one flat group.

Each site is one orchestra on its own LAN (:class:`~mesh._sim_sites.SiteSimulator`); the sites
meet once through their supernodes, as the registry proposes them to each other. With the tier,
members probe their own site only and the supernodes probe each other with the ``wan`` timings:
minutes of the long lossy link make no false death, a crash inside a site is still noticed on
its LAN within the LAN bound, and the other site learns it too.

The sites are behind NATs: only the two supernodes reach each other (as through the registry's
relay); a datagram from any other node of one site to the other site is lost. The same
federation as one flat group (every node probing every node) declares the other site's live
members dead.
"""

from __future__ import annotations

import random
from typing import Any

from mesh._membership import MemberEvent
from mesh._nodecore import NodeCore
from mesh._profiles import Profile, get_profile
from mesh._sim import LinkModel, SimNode
from mesh._sim_sites import LAN_LINK, SiteSimulator
from mesh._wire import Address, MemberRecord

WAN = LinkModel(delay=0.2, jitter=0.0, loss=0.02)
"""200 ms each way and 2 % loss between the sites, as in tests/test_netns_wan.py."""
LAN_BOUND_S = 5.0
"""A crashed member is declared dead by its own site within this (LAN profile: a 0.3 s probe
period and a 1-3 s suspicion)."""
WAN_BOUND_S = 10.0
"""... and by the other site within this: its own site's verdict crosses through the
supernodes and stands (measured: 2.0-2.2 s)."""
PER_SITE = 4
MINUTES = 5


NAT = LinkModel(loss=1.0)
"""Between sites, for anything but the two supernodes."""


class NatSites(SiteSimulator):
    """Sites whose only way across is between their supernodes (``n0``)."""

    def link_between(self, src: Address, dest: Address) -> LinkModel:
        link = super().link_between(src, dest)
        if link is self.wan and not (src in self.supernodes and dest in self.supernodes):
            return NAT
        return link

    supernodes: set[Address] = set()


class Federation:
    """Two sites of :data:`PER_SITE` nodes each, merged through their first nodes."""

    def __init__(self, seed: int, wan_profile: Profile | None) -> None:
        self.sim = NatSites(seed, LAN_LINK, WAN)
        self.sim.supernodes = set()
        lan = get_profile("lan")

        def make(me: MemberRecord, now: float, rng: random.Random, snapshot: Any) -> NodeCore:
            return NodeCore(
                me,
                lan,
                now=now,
                rng=rng,
                snapshot=snapshot,
                supernode=me.name == "n0",
                joined_at=now,
                wan_profile=wan_profile,
            )

        self.sim.core_factory = make
        self.deaths: list[tuple[float, str, str]] = []  # (time, observer, dead member)
        self.sim.on_event = self._on_event
        self.sites: list[list[SimNode]] = []
        for site in range(2):
            records = [self.sim.record_at(site, f"n{i}", f"s{site}") for i in range(PER_SITE)]
            first = self.sim.add_node(records[0])
            self.sim.supernodes.add(first.address)
            nodes = [first]
            nodes += [self.sim.add_node(r, seeds=[first.address]) for r in records[1:]]
            self.sites.append(nodes)
        self.sim.run_until(3.0)  # each site elects its supernode (n0, flagged)
        a, b = self.sites[0][0], self.sites[1][0]
        self.sim.call_node(b, 0.0, lambda now: b.core.add_candidate(now, a.address))

    def _on_event(self, node: SimNode, event: Any, now: float) -> None:
        if type(event) is MemberEvent and event.kind == "dead":
            self.deaths.append((now, node.node_id, event.member.node_id))

    def everyone_sees_everyone(self) -> bool:
        nodes = [n for site in self.sites for n in site]
        ids = {n.node_id for n in nodes}
        for node in nodes:
            core = node.core
            assert isinstance(core, NodeCore)
            live = {m.node_id for m in core.membership.members() if m.is_live}
            if live != ids:
                return False
        return True


def test_a_long_lossy_link_between_sites_makes_no_false_death_with_the_site_tier() -> None:
    for seed in range(3):
        fed = Federation(seed, get_profile("wan"))
        assert fed.sim.run_until(30.0, fed.everyone_sees_everyone), f"seed {seed}: no merge"
        fed.sim.run_until(fed.sim.now + MINUTES * 60)
        assert fed.deaths == [], f"seed {seed}: false deaths {fed.deaths}"
        assert fed.everyone_sees_everyone()
        # Only the supernodes crossed: members probe their own site.
        for site in fed.sites:
            for member in site[1:]:
                core = member.core
                assert isinstance(core, NodeCore)
                assert core.membership.contacts == frozenset()
        supernode = fed.sites[0][0].core
        assert isinstance(supernode, NodeCore)
        assert supernode.membership.contacts == {fed.sites[1][0].node_id}


def test_a_crash_inside_a_site_is_noticed_in_the_lan_bound_and_reaches_the_other_site() -> None:
    for seed in range(3):
        fed = Federation(seed, get_profile("wan"))
        assert fed.sim.run_until(30.0, fed.everyone_sees_everyone), f"seed {seed}: no merge"
        victim = fed.sites[1][2]
        fed.sim.crash(victim)
        crashed_at = fed.sim.now
        fed.sim.run_until(crashed_at + WAN_BOUND_S)
        seen = {obs: t - crashed_at for t, obs, dead in fed.deaths if dead == victim.node_id}
        assert {d for _, _, d in fed.deaths} == {victim.node_id}, fed.deaths
        for node in fed.sites[1]:
            if node is not victim:
                assert seen[node.node_id] <= LAN_BOUND_S, (seed, seen)
        for node in fed.sites[0]:
            assert seen[node.node_id] <= WAN_BOUND_S, (seed, seen)


def test_without_the_tier_members_behind_nats_declare_the_other_site_dead() -> None:
    # The control: one flat group on the LAN profile over the same link and NATs.
    fed = Federation(0, None)
    fed.sim.run_until(60.0)
    members = {n.node_id for site in fed.sites for n in site[1:]}
    assert {dead for _, _, dead in fed.deaths} & members
