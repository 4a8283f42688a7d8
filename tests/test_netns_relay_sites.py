"""Two sites of two nodes each, each site behind its own NAT, joined through the registry's relay
(network namespaces, real processes, nftables).

Layout: a :class:`~tests.netns.Lan` of three hosts is the public network: host 0 runs
``stagemesh registry``, hosts 1 and 2 are the venues' routers. Behind each router is a site's
private network (:meth:`~tests.netns.Lan.add_site` and :meth:`~tests.netns.Lan.add_site_host`:
two hosts, masqueraded on the way out, nothing let in that does not answer the site's own
traffic). Each site has one ``--conductor`` node (its supernode: it starts first) and one plain
member; the nodes of a site find each other with broadcast beacons on their own port, and only
the registry joins the sites.

No node of one site can reach the other site directly. The supernodes gossip through the
relay; the members talk to their own site only (the site tier the registry bridge turns on), so
they never probe the other site's members and declare none of them dead. The test asserts:
both orchestras see each other's members, one conductor for the federation, federation time
agreeing across the sites within 2 ms (p99 of the spread over 100 ms bins, from
tests/clock_sampler.py beside each node), no death while it watches, and it prints the
relay's share of each supernode's traffic.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.netns import Host, Lan, Spawned
from tests.test_netns_clock_registry import SAMPLER, read, smoothed
from tests.test_netns_two_sites import (
    one_conductor_in,
    start_node,
    start_registry,
    status,
    wait_until,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]

AGREEMENT_S = 0.002
WATCH_S = 20.0


def test_two_sites_of_two_behind_nats_agree_through_the_relay(tmp_path: Path) -> None:
    with Lan(3) as lan:
        reg_host, router_a, router_b = lan.hosts
        a1 = lan.add_site(router_a, "10.83.0.0/24")
        a2 = lan.add_site_host(a1)
        b1 = lan.add_site(router_b, "10.84.0.0/24")
        b2 = lan.add_site_host(b1)
        url = start_registry(lan, reg_host, tmp_path)
        nodes: list[tuple[Host, str]] = []
        samplers: list[Spawned] = []
        for orchestra, host, flags in (
            ("a", a1, ("--conductor",)),
            ("b", b1, ("--conductor",)),
            ("a", a2, ()),
            ("b", b2, ()),
        ):
            _, status_url = start_node(lan, host, tmp_path, orchestra, url, *flags)
            nodes.append((host, status_url))
            out = str(tmp_path / f"clock{host.index}")
            samplers.append(lan.spawn(host, sys.executable, SAMPLER, status_url, out))
        orchestra_of = {a1.index: "a", a2.index: "a", b1.index: "b", b2.index: "b"}
        everyone = {f"/{o}/h{i}" for i, o in orchestra_of.items()}
        supernodes = {"a": f"/a/h{a1.index}", "b": f"/b/h{b1.index}"}
        docs: list[dict[str, Any]] = []

        def merged() -> bool:
            docs[:] = [status(lan, host, u) for host, u in nodes]
            return all(
                {m["path"] for m in d["members"] if m["state"] == "alive"} == everyone
                and d["supernodes"] == supernodes
                for d in docs
            )

        try:
            took = wait_until(merged, 60, "both orchestras' members in every view")
        except AssertionError as e:
            views = {
                d["node"]["path"]: (
                    sorted((m["path"], m["state"]) for m in d["members"]),
                    d["supernodes"],
                    d["registry"],
                )
                for d in docs
            }
            raise AssertionError(f"{e}; the views: {views}") from None
        print(f"both sites merged {took:.1f} s after the last node started")

        def one_conductor() -> bool:
            docs[:] = [status(lan, host, u) for host, u in nodes]
            return one_conductor_in(docs)

        wait_until(one_conductor, 30, "exactly one conductor, the same on both sites")

        def synced() -> bool:
            # Every clock synced, in one lineage (the younger site has stepped to the older).
            docs[:] = [status(lan, host, u) for host, u in nodes]
            return len({d["clock"]["lineage"] for d in docs}) == 1 and all(
                d["clock"]["synced"] or d["clock"]["is_reference"] for d in docs
            )

        wait_until(synced, 30, "every clock synced, in one lineage")

        # Watch the federation for a while: nobody dies (the members cannot reach the other
        # site, and must not conclude it is dead), the clocks are sampled meanwhile.
        watched_from = time.time()
        end = time.monotonic() + WATCH_S
        while time.monotonic() < end:
            for host, u in nodes:
                members = status(lan, host, u)["members"]
                assert [m["state"] for m in members] == ["alive"] * 4, members
            time.sleep(1.0)  # watching the federation for a while is what this part is about
        watched_to = time.time()
        docs[:] = [status(lan, host, u) for host, u in nodes]
        assert {d["conductor"] for d in docs} == {docs[0]["conductor"]}
        relays = {d["node"]["path"]: d["registry"]["relay"] for d in docs}
        for orchestra, path in supernodes.items():
            other = next(p for o, p in supernodes.items() if o != orchestra)
            relay = relays[path]
            assert relay["routes"] == {other: "relay"}, relay
            assert relay["relayed"] > 0 and 0 < relay["relay_share"] <= 1, relay
            print(f"{path}: {relay['relay_share']:.0%} of its datagrams to {other} relayed")
        for proc in samplers:
            proc.kill()

    # Federation time minus host time (all namespaces share the host's clock), per 100 ms bin
    # while watched: its spread across the four nodes of both sites.
    offsets: dict[int, dict[int, float]] = {}
    for index in orchestra_of:
        rows = [r for r in read(tmp_path / f"clock{index}") if r["kind"] == "clock"]
        for t, _, offset in smoothed(rows):
            if watched_from <= t < watched_to:
                offsets.setdefault(int(t * 10), {})[index] = offset
    spreads = sorted(max(v.values()) - min(v.values()) for v in offsets.values() if len(v) == 4)
    assert len(spreads) >= WATCH_S * 5, f"too few joint readings: {len(spreads)}"
    p99 = spreads[int(0.99 * (len(spreads) - 1))]
    print(f"clock spread across sites: p50 {spreads[len(spreads) // 2] * 1e6:.0f} us, "
          f"p99 {p99 * 1e6:.0f} us, max {spreads[-1] * 1e6:.0f} us")  # fmt: skip
    assert p99 <= AGREEMENT_S, spreads[-20:]
