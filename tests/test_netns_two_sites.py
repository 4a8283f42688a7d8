"""Two sites joined only by a registry, in network namespaces (real processes, real sockets).

Layout (one :class:`~tests.netns.Lan` of five hosts): host 0 runs ``stagemesh registry``;
hosts 1-2 are site A (orchestra ``a``), hosts 3-4 site B (orchestra ``b``). Within a site the
nodes find each other with real UDP broadcast beacons; the sites use **different beacon
ports** and no mDNS, which models "broadcast and mDNS cannot cross from one site to the
other" (the harness has a single bridge, so the isolation is by port, not by wire). No seeds
cross the sites either: only the registry can join them. One ``--conductor`` candidate per
site: after the merge exactly one conductor must remain federation-wide.

The registry is started only once both sites have formed (and say it is unreachable), so the
test also shows the LAN working without it and the bridges reconnecting with back-off.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness import wait_until
from tests.netns import Host, Lan, Spawned
from tests.registries import registry_argv

pytestmark = [pytest.mark.netns, pytest.mark.slow]

FEDERATION = "twosites"
REGISTRY_PORT = 7480
SITE_BEACON_PORT = {"a": 17470, "b": 17490}

FETCH_SCRIPT = (
    "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())"
)
CLOCK_SCRIPT = """
import json, sys, urllib.request
out = []
for url in sys.argv[1:]:
    with urllib.request.urlopen(url + "/api/clock", timeout=5) as r:
        d = json.load(r)
    out.append(d["federation_time"] - d["host_time"])
print(json.dumps(out))
"""


def start_node(
    lan: Lan, host: Host, tmp: Path, orchestra: str, registry: str, *flags: str
) -> tuple[Spawned, str]:
    proc = lan.spawn(
        host,
        sys.executable,
        "-m",
        "mesh",
        "node",
        "--federation",
        FEDERATION,
        "--bind",
        "0.0.0.0",
        "--orchestra",
        orchestra,
        "--name",
        f"h{host.index}",
        "--state-dir",
        str(tmp / f"state{host.index}"),
        "--no-mdns",
        "--broadcast-port",
        str(SITE_BEACON_PORT[orchestra]),
        "--registry",
        registry,
        *flags,
    )
    line = proc.wait_for(lambda text: text.startswith("ready "), timeout=30)
    url = dict(part.split("=", 1) for part in line.split()[1:])["status"]
    return proc, url


def start_registry(lan: Lan, host: Host, tmp: Path) -> str:
    """``stagemesh registry`` on *host* (all its addresses, port 7480, a SQLite file in
    *tmp*), once ready: its URL."""
    registry = lan.spawn(host, *registry_argv(tmp / "registry.db", bind=f"0.0.0.0:{REGISTRY_PORT}"))
    registry.wait_for(lambda text: text.startswith("ready "), timeout=30)
    return f"http://{host.address}:{REGISTRY_PORT}"


def one_conductor_in(docs: list[dict[str, Any]]) -> bool:
    """Whether the nodes' status documents *docs* name one and the same conductor, each listing
    exactly one member flagged as the conductor."""
    conductors = {d["conductor"] for d in docs}
    flagged = [sum(m["conductor"] for m in d["members"]) for d in docs]
    return len(conductors) == 1 and None not in conductors and flagged == [1] * len(docs)


def status(lan: Lan, host: Host, url: str) -> dict[str, Any]:
    out = lan.run(host, sys.executable, "-m", "mesh", "status", url, "--json").stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_two_sites_merge_through_the_registry(tmp_path: Path) -> None:
    with Lan(5) as lan:
        reg_host = lan.hosts[0]
        url = f"http://{reg_host.address}:{REGISTRY_PORT}"
        sites = {"a": lan.hosts[1:3], "b": lan.hosts[3:5]}
        nodes: list[tuple[Host, str]] = []
        for orchestra, hosts in sites.items():
            for i, host in enumerate(hosts):
                flags = ("--conductor",) if i == 0 else ()
                _, status_url = start_node(lan, host, tmp_path, orchestra, url, *flags)
                nodes.append((host, status_url))
        everyone = {f"/{o}/h{h.index}" for o, hosts in sites.items() for h in hosts}
        docs: list[dict[str, Any]] = []

        # First the registry is down: each site forms on its own LAN with its own conductor
        # (the arbiter falls back to the local rule), the sites stay apart, and each supernode
        # and conductor candidate says the registry is unreachable (the others are idle: their
        # supernode speaks for them).
        def asks_registry(d: dict[str, Any]) -> bool:
            me = next(m for m in d["members"] if m["path"] == d["node"]["path"])
            return d["node"]["path"] in d["supernodes"].values() or me["candidate"]["conductor"]

        def sites_apart() -> bool:
            docs[:] = [status(lan, host, u) for host, u in nodes]
            return all(
                {m["path"] for m in d["members"] if m["state"] == "alive"}
                == {p for p in everyone if p.startswith(f"/{d['node']['orchestra']}/")}
                and d["registry"]["state"] == ("unreachable" if asks_registry(d) else "idle")
                and d["conductor"]
                == f"/{d['node']['orchestra']}/h{sites[d['node']['orchestra']][0].index}"
                for d in docs
            )

        wait_until(sites_apart, 30, "two separate sites with the registry unreachable")

        # The registry starts: the bridges reconnect (with back-off) and the sites merge.
        start_registry(lan, reg_host, tmp_path)

        def merged() -> bool:
            docs[:] = [status(lan, host, u) for host, u in nodes]
            return all(
                {m["path"] for m in d["members"] if m["state"] == "alive"} == everyone
                and set(d["supernodes"]) == {"a", "b"}
                and d["conductor"] is not None
                for d in docs
            )

        wait_until(merged, 60, "both sites in every node's view")

        def one_conductor() -> bool:
            docs[:] = [status(lan, host, u) for host, u in nodes]
            same_supernodes = len({json.dumps(d["supernodes"], sort_keys=True) for d in docs})
            return one_conductor_in(docs) and same_supernodes == 1

        wait_until(one_conductor, 30, "exactly one conductor, the same everywhere")
        conductor = docs[0]["conductor"]
        assert conductor in {f"/{o}/h{hosts[0].index}" for o, hosts in sites.items()}

        # Every node reached the other site through the registry, not through its LAN
        # discovery, and the supernodes are the registered ones. A bridge refreshes its peer
        # list on its own period, so the lists may lag a supernode change by one refresh.
        def through_the_registry() -> bool:
            docs[:] = [status(lan, host, u) for host, u in nodes]
            for doc in docs:
                assert doc["registry"]["url"] == url
                assert doc["registry"]["state"] in ("connected", "idle")
                if doc["node"]["path"] not in doc["supernodes"].values():
                    continue
                if doc["registry"]["registered_as"] != doc["node"]["path"]:
                    return False
                if doc["registry"]["state"] != "connected":
                    return False
                other = next(o for o in sites if o != doc["node"]["orchestra"])
                other_host = next(
                    h for h in sites[other] if doc["supernodes"][other].endswith(f"/h{h.index}")
                )
                peers = doc["registry"]["peers"]
                if not any(p.startswith(other_host.address + ":") for p in peers):
                    return False
            return True

        wait_until(through_the_registry, 30, "each supernode registered and listing the other")

        def registry_get(path: str) -> Any:
            target = f"{url}/api/v1/federations/{FEDERATION}{path}"
            out = lan.run(reg_host, sys.executable, "-c", FETCH_SCRIPT, target).stdout
            return json.loads(out)

        view = registry_get("")
        registered = {o["name"]: o["supernode"] for o in view["orchestras"]}
        assert registered == docs[0]["supernodes"]
        # The registry (the conductor's arbiter) records the mesh's conductor.
        wait_until(
            lambda: registry_get("/conductor")["holder"] == conductor, 20, "registry conductor"
        )

        # Clocks agree: federation time minus host time, read at one instant per node (all
        # namespaces share the host's clock), within 50 ms across both sites.
        offsets: list[float] = []

        def clocks_agree() -> bool:
            offsets.clear()
            for host, u in nodes:
                out = lan.run(host, sys.executable, "-c", CLOCK_SCRIPT, u).stdout
                offsets.extend(json.loads(out))
            synced = all(
                status(lan, host, u)["clock"]["synced"]
                or status(lan, host, u)["clock"]["is_reference"]
                for host, u in nodes
            )
            return synced and max(offsets) - min(offsets) < 0.05

        wait_until(clocks_agree, 60, f"clocks agree (offsets {offsets})")
