"""Two sites, each behind its own NAT, joined through the registry's relay (network
namespaces, real processes, nftables).

Layout: a :class:`~tests.netns.Lan` of three hosts is the public network: host 0 runs
``stagemesh registry``, hosts 1 and 2 are the venues' routers. Behind each router is a site
(:meth:`~tests.netns.Lan.add_site`: its own namespace and private subnet, masqueraded on the
way out, nothing let in that does not answer the site's own traffic), with one
``--conductor`` node (its orchestra's supernode). Both sites reach the registry; neither can
reach the other. The supernodes find each other through the registry, fail to reach each
other directly, and move their gossip (and the join's state exchange) to the relay: both see
both members alive, one conductor for the federation, and each reports the relay's share of
its traffic in ``/api/status``. Then a direct path between the venues is opened
(:meth:`~tests.netns.Lan.open_sites`): the first direct acks move both supernodes off the
relay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.netns import Host, Lan
from tests.test_netns_two_sites import (
    one_conductor_in,
    start_node,
    start_registry,
    status,
    wait_until,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def test_sites_that_cannot_reach_each_other_gossip_through_the_relay_then_directly(
    tmp_path: Path,
) -> None:
    with Lan(3) as lan:
        reg_host, router_a, router_b = lan.hosts
        host_a = lan.add_site(router_a, "10.81.0.0/24")
        host_b = lan.add_site(router_b, "10.82.0.0/24")
        url = start_registry(lan, reg_host, tmp_path)
        nodes: list[tuple[Host, str]] = []
        for orchestra, host in (("a", host_a), ("b", host_b)):
            _, status_url = start_node(lan, host, tmp_path, orchestra, url, "--conductor")
            nodes.append((host, status_url))
        everyone = {f"/a/h{host_a.index}", f"/b/h{host_b.index}"}
        docs: list[dict[str, Any]] = []

        def other(doc: dict[str, Any]) -> str:
            """The other site's supernode, as the relay names it."""
            return next(p for p in everyone if p != doc["node"]["path"])

        def merged_through_the_relay() -> bool:
            docs[:] = [status(lan, host, u) for host, u in nodes]
            return all(
                {m["path"] for m in d["members"] if m["state"] == "alive"} == everyone
                and d["registry"]["relay"] is not None
                and d["registry"]["relay"]["routes"] == {other(d): "relay"}
                and d["registry"]["relay"]["received"] > 0
                for d in docs
            )

        wait_until(merged_through_the_relay, 40, "both sites in both views, through the relay")

        def one_conductor() -> bool:
            docs[:] = [status(lan, host, u) for host, u in nodes]
            return one_conductor_in(docs)

        wait_until(one_conductor, 20, "exactly one conductor, the same on both sites")
        for doc in docs:
            relay = doc["registry"]["relay"]
            assert relay["relayed"] > 0 and 0 < relay["relay_share"] <= 1, relay
            assert doc["registry"]["registered_as"] == doc["node"]["path"]

        # A direct path between the venues opens: both supernodes move off the relay at the
        # first direct acks.
        lan.open_sites(host_a, host_b)

        def direct_again() -> bool:
            docs[:] = [status(lan, host, u) for host, u in nodes]
            return all(
                d["registry"]["relay"]["routes"] == {other(d): "direct"}
                and {m["path"] for m in d["members"] if m["state"] == "alive"} == everyone
                for d in docs
            )

        wait_until(direct_again, 20, "both supernodes back on direct UDP")
