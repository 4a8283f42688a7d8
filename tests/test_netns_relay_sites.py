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

Then a direct path between the venues is opened (:meth:`~tests.netns.Lan.open_sites`): both
supernodes move their route to the other site's supernode from ``relay`` to ``direct`` (the
first direct acks), and while the federation is watched again on direct UDP the clocks still
agree across the sites within 2 ms (p99), the routes stay direct, and nothing goes through
the relay. No node's log (JSON, as tests/soak.py reads it) declares any member dead, from the
first node's start to the end.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import wait_until
from tests.netns import Host, Lan, Spawned
from tests.soak import member_events
from tests.test_netns_clock_registry import SAMPLER, read, smoothed
from tests.test_netns_two_sites import one_conductor_in, start_node, start_registry, status

pytestmark = [pytest.mark.netns, pytest.mark.slow]

AGREEMENT_S = 0.002
WATCH_S = 20.0
DIRECT_WATCH_S = 10.0


def clock_spread_p99(tmp_path: Path, indices: list[int], window: tuple[float, float]) -> float:
    """Federation time minus host time (all namespaces share the host's clock) of the nodes
    at *indices*, per 100 ms bin within *window* (host time): the p99 of its spread across
    them, printed with p50 and max."""
    watched_from, watched_to = window
    offsets: dict[int, dict[int, float]] = {}
    for index in indices:
        rows = [r for r in read(tmp_path / f"clock{index}") if r["kind"] == "clock"]
        for t, _, offset in smoothed(rows):
            if watched_from <= t < watched_to:
                offsets.setdefault(int(t * 10), {})[index] = offset
    spreads = sorted(
        max(v.values()) - min(v.values()) for v in offsets.values() if len(v) == len(indices)
    )
    assert len(spreads) >= (watched_to - watched_from) * 5, f"too few joint readings: {spreads}"
    p99 = spreads[int(0.99 * (len(spreads) - 1))]
    print(f"p50 {spreads[len(spreads) // 2] * 1e6:.0f} us, "
          f"p99 {p99 * 1e6:.0f} us, max {spreads[-1] * 1e6:.0f} us")  # fmt: skip
    return p99


def test_two_sites_of_two_behind_nats_agree_through_the_relay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAGEMESH_LOG_FORMAT", "json")  # member events read from the logs
    with Lan(3) as lan:
        reg_host, router_a, router_b = lan.hosts
        a1 = lan.add_site(router_a, "10.83.0.0/24")
        a2 = lan.add_site_host(a1)
        b1 = lan.add_site(router_b, "10.84.0.0/24")
        b2 = lan.add_site_host(b1)
        url = start_registry(lan, reg_host, tmp_path)
        nodes: list[tuple[Host, str]] = []
        procs: list[Spawned] = []
        samplers: list[Spawned] = []
        for orchestra, host, flags in (
            ("a", a1, ("--conductor",)),
            ("b", b1, ("--conductor",)),
            ("a", a2, ()),
            ("b", b2, ()),
        ):
            proc, status_url = start_node(lan, host, tmp_path, orchestra, url, *flags)
            procs.append(proc)
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

        def other_supernode(orchestra: str) -> str:
            return next(p for o, p in supernodes.items() if o != orchestra)

        def relays() -> dict[str, dict[str, Any]]:
            """Each supernode's relay status (the bridge's), by its path."""
            return {
                supernodes[orchestra]: status(lan, host, u)["registry"]["relay"]
                for orchestra, (host, u) in zip("ab", nodes[:2], strict=True)
            }

        def watch(seconds: float) -> tuple[float, float]:
            """Watch the federation for *seconds*: every node sees all four members alive
            and one conductor; the clocks are sampled meanwhile. Returns the window (host
            time)."""
            watched_from = time.time()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for host, u in nodes:
                    members = status(lan, host, u)["members"]
                    assert [m["state"] for m in members] == ["alive"] * 4, members
                time.sleep(1.0)  # watching the federation for a while is what this is about
            watched_to = time.time()
            docs[:] = [status(lan, host, u) for host, u in nodes]
            assert {d["conductor"] for d in docs} == {docs[0]["conductor"]}
            return watched_from, watched_to

        # Through the relay: nobody dies (the members cannot reach the other site, and must
        # not conclude it is dead).
        relay_window = watch(WATCH_S)
        before = relays()
        for orchestra, path in supernodes.items():
            other, relay = other_supernode(orchestra), before[path]
            assert relay["routes"] == {other: "relay"}, relay
            assert relay["relayed"] > 0 and 0 < relay["relay_share"] <= 1, relay
            print(f"{path}: {relay['relay_share']:.0%} of its datagrams to {other} relayed")

        # A direct path between the venues opens: both supernodes move off the relay.
        lan.open_sites(a1, b1)

        def direct() -> bool:
            now = relays()
            return all(
                now[path]["routes"] == {other_supernode(o): "direct"}
                for o, path in supernodes.items()
            )

        took = wait_until(direct, 30, "both supernodes' routes to the other site direct")
        print(f"both supernodes direct {took:.1f} s after the path opened")
        moved = relays()
        direct_window = watch(DIRECT_WATCH_S)
        after = relays()
        for orchestra, path in supernodes.items():
            other = other_supernode(orchestra)
            assert after[path]["routes"] == {other: "direct"}, after[path]
            sent = {k: after[path][k] - moved[path][k] for k in ("direct", "relayed")}
            assert sent["direct"] > 0 and sent["relayed"] == 0, (moved[path], after[path])
            print(f"{path}: {sent['direct']} datagrams to {other} sent directly, "
                  f"{sent['relayed']} relayed while watched on direct UDP")  # fmt: skip
        for proc in samplers:
            proc.kill()
        events = [(proc.host.index, *e) for proc in procs for e in member_events(proc.stderr())]
        # the logs are read (each node logged the others joining), and nobody died
        assert {i for i, _, _, kind in events if kind == "joined"} == set(orchestra_of)
        deaths = [e for e in events if e[3] == "dead"]

    assert deaths == [], deaths
    # Federation time minus host time, across the four nodes of both sites, while watched.
    print("clock spread across sites through the relay: ", end="")
    assert clock_spread_p99(tmp_path, list(orchestra_of), relay_window) <= AGREEMENT_S
    print("clock spread across sites on direct UDP: ", end="")
    assert clock_spread_p99(tmp_path, list(orchestra_of), direct_window) <= AGREEMENT_S
