"""A federation of sites in the simulator (mesh/_sim_sites.py): each site its own LAN and
orchestra, joined only through their supernodes' WAN tier.

A join is known by its orchestra and, as its orchestra's summary, by every other supernode;
what an ordinary member holds and sends does not depend on how many other sites there are.
"""

from __future__ import annotations

import pytest

from mesh._membership import Membership
from mesh._sim import LinkModel, SimNode
from mesh._sim_sites import (
    LAN_LINK,
    SUMMARY_KEY,
    WAN_LINK,
    SiteFederation,
    SiteSimulator,
    records_held,
    run_federation_join,
)


def test_a_join_at_one_site_reaches_its_orchestra_and_every_supernode() -> None:
    result = run_federation_join(2000, 20, seed=3, timeout_s=20.0)
    assert result.converged
    assert result.join_site_s is not None and result.join_all_s is not None
    assert result.join_site_s <= result.join_all_s < 10.0
    # An ordinary member holds its orchestra (100, or 101 at the joiner's site), a supernode
    # its orchestra and one tier record per site.
    assert 100 <= result.records_per_member <= 101
    assert 120 <= result.records_per_supernode <= 121


def test_what_a_member_holds_and_sends_does_not_grow_with_other_sites() -> None:
    few = run_federation_join(200, 2, seed=5, timeout_s=20.0)
    many = run_federation_join(2000, 20, seed=5, timeout_s=20.0)
    assert few.converged and many.converged
    assert many.records_per_member == pytest.approx(few.records_per_member, abs=1)
    assert many.bytes_per_member_s == pytest.approx(few.bytes_per_member_s, rel=0.05)
    # The supernodes hold the sites: 100 + 2 against 100 + 20.
    assert many.records_per_supernode - few.records_per_supernode == pytest.approx(18, abs=1)


def test_only_supernodes_talk_across_sites_and_members_know_only_their_orchestra() -> None:
    sim = SiteSimulator(seed=11)
    federation = SiteFederation(sim, sites=4, per_site=10)
    crossings: list[tuple[int, int]] = []
    plain = sim._link

    def counting(node: SimNode, dest: tuple[str, int], target: SimNode | None) -> LinkModel:
        src = node.address
        if sim.site_of[src] != sim.site_of[dest]:
            crossings.append((sim.site_of[src], sim.site_of[dest]))
            assert src in sim.tier_addresses and dest in sim.tier_addresses
        link = plain(node, dest, target)
        assert link == sim.link_between(src, dest)  # the fast path gives the same link
        return link

    sim._link = counting  # type: ignore[method-assign]
    sim.run_until(10.0)
    assert crossings, "the supernodes never spoke across sites"
    for site in federation.sites:
        for node in site.members:
            core = node.core
            assert isinstance(core, Membership)
            assert {m.orchestra for m in core.members()} == {site.orchestra}
            assert records_held(node) == 10
        tier = site.tier.core
        assert isinstance(tier, Membership)
        assert tier.live_count() == 4


def test_the_site_link_model_is_lan_inside_and_wan_between() -> None:
    sim = SiteSimulator(seed=1)
    federation = SiteFederation(sim, sites=2, per_site=3)
    a, b = federation.sites
    assert sim.link_between(a.members[1].address, a.members[2].address) == LAN_LINK
    assert sim.link_between(a.tier.address, b.tier.address) == WAN_LINK


def test_a_federation_run_is_reproducible() -> None:
    first = run_federation_join(300, 3, seed=9, loss=0.02)
    again = run_federation_join(300, 3, seed=9, loss=0.02)
    assert first.converged
    assert first.trace_hash == again.trace_hash
    assert first.join_all_s == again.join_all_s


def test_a_member_that_leaves_or_dies_changes_its_orchestras_summary_everywhere() -> None:
    sim = SiteSimulator(seed=4)
    federation = SiteFederation(sim, sites=3, per_site=10)
    home = federation.sites[0]
    sim.run_until(1.0)
    sim.crash(home.members[3])
    sim.leave(home.members[5])

    def summaries() -> list[object]:
        out: list[object] = []
        for site in federation.sites[1:]:
            tier = site.tier.core
            assert isinstance(tier, Membership)
            view = tier.member(home.supernode.node_id)
            assert view is not None
            out.append(view.meta.get(SUMMARY_KEY))
        return out

    while sim.now < 30.0 and summaries() != [8, 8]:
        sim.run_until(sim.now + 0.1)
    assert summaries() == [8, 8], summaries()
