"""A registry fleet in network namespaces: PostgreSQL on one host, two registries on two
others over that one database, two sites bridged through them, and the registry in use
killed (``kill -9``) mid-concert.

Layout (one :class:`~tests.netns.Lan` of seven hosts): host 0 runs PostgreSQL (a throwaway
cluster of tests/postgres.py, inside host 0's namespace, listening on its address); hosts 1
and 2 each run ``stagemesh registry`` on that one database (started by tests/registries.py);
hosts 3-4 are site A (orchestra ``a``), hosts 5-6 site B (orchestra ``b``). As in
tests/test_netns_two_sites.py the sites use different beacon ports and no mDNS or seeds, so
only the registries join them. Every node is a ``--conductor`` candidate, so every bridge
registers and heartbeats (none is idle), and every bridge is given both registries in the
same order (``--registry URL1,URL2``): all use registry 1.

Meanwhile a client in host 0's namespace runs the registry chaos load of
tests/registry_chaos.py over both registries (another federation), each worker on one of
them and moving to the other when a call goes unanswered, and logs every answer.

Then registry 1 dies (``kill -9``):

- every bridge reports registry 2 in use, and a successful exchange with it, within 5 s of
  the kill (read from each node's status API);
- every poll of every node's view, from before the kill to the end, shows all four members
  alive and the same one conductor, and every node keeping the federation's time (synced,
  or the reference);
- every registration of the nodes is refreshed through registry 2 after the kill, and the
  chaos client's acknowledged writes (before and after the kill, through either registry)
  are all in the database: :func:`tests.registry_chaos.check` through registry 2, against
  the state replayed from the client's log file.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.harness import wait_until
from tests.netns import Host, Lan, Spawned, enter_netns, in_netns
from tests.postgres import Cluster
from tests.registries import ready_url, registry_argv, registry_command
from tests.registry_chaos import (
    ChaosConfig,
    FleetUp,
    Ledger,
    check,
    expected_from_log,
    run_fleet_load,
)
from tests.test_netns_two_sites import FEDERATION, start_node

pytestmark = [pytest.mark.netns, pytest.mark.slow]

REGISTRY_PORT = 7480
SWITCH_WITHIN = 5.0
LOAD = ChaosConfig(workers=4, rate=8.0, json_paths=6, legacy_paths=2, seed=21)


def start_registries(lan: Lan, hosts: list[Host], db: str) -> list[tuple[Spawned, str]]:
    """``stagemesh registry`` on each of *hosts* (its address, port 7480) over *db*: each
    process and its URL, once ready."""
    started = []
    for host in hosts:
        argv = registry_argv(db, "--ttl", "3600", bind=f"{host.address}:{REGISTRY_PORT}")
        proc = lan.spawn(host, *argv)
        line = proc.wait_for(lambda text: text.startswith("ready "), 30)
        started.append((proc, ready_url(line, db, host.address)))
    return started


class FleetClient:
    """The chaos load over the fleet, from a thread of its own inside a host's namespace
    (its trio run and every socket it makes live there), logging to *log*."""

    def __init__(self, host: Host, urls: list[str], log: Path) -> None:
        self.host = host
        self.urls = urls
        self.log = log
        self.ledger: Ledger | None = None
        self.up: FleetUp | None = None
        self.problems: list[dict[str, Any]] | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._survivor = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._cancel: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._run, name="fleet-client", daemon=True)

    def start(self) -> None:
        """Start the load; return once every worker runs."""
        self._thread.start()
        assert self._ready.wait(30), "the fleet client did not start"
        if self.error is not None:
            raise self.error

    def acknowledged(self) -> int:
        """Writes acknowledged so far."""
        counts = dict(self.ledger.counts) if self.ledger is not None else {}
        return sum(v for k, v in counts.items() if k.endswith(":ack"))

    def stop_and_check(self, survivor: int) -> list[dict[str, Any]]:
        """Pause the load, wait until no call is out, check the database through registry
        *survivor* against the log file; the problems found."""
        assert self._token is not None and self._stop is not None
        self._survivor = survivor
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(60)
        assert not self._thread.is_alive(), "the fleet client did not stop"
        if self.error is not None:
            raise self.error
        assert self.problems is not None
        return self.problems

    def close(self) -> None:
        """Stop the load at once if it still runs (a test that failed midway)."""
        if self._thread.is_alive() and self._token is not None and self._cancel is not None:
            trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
            self._thread.join(30)

    def _run(self) -> None:
        try:
            enter_netns(self.host.netns)
            trio.run(self._main)
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        with Ledger.open(self.log) as ledger, trio.fail_after(120):
            self.ledger = ledger
            async with trio.open_nursery() as nursery:
                up = await nursery.start(run_fleet_load, self.urls, "fleetload", ledger, LOAD)
                self.up = up
                self._cancel = nursery.cancel_scope
                self._token = trio.lowlevel.current_trio_token()
                self._stop = trio.Event()
                self._ready.set()
                await self._stop.wait()
                up.down()
                await up.idle()
                ledger.out.flush()
                replayed = expected_from_log(self.log)  # the log file is the proof
                replayed.out = ledger.out  # the check's reconciliations go to the log too
                self.problems = await check(up.apis[self._survivor], replayed)
                nursery.cancel_scope.cancel()


def keeps_time(doc: dict[str, Any]) -> bool:
    """Whether the node keeps the federation's time (synced to its reference, or it)."""
    return bool(doc["clock"]["synced"] or doc["clock"]["is_reference"])


class Views:
    """Every node's status, polled: each poll checks that all four members are alive in
    every view with the same one conductor, every node keeping the federation's time, and
    records what was wrong when not."""

    def __init__(self, lan: Lan, nodes: list[tuple[Host, str]], everyone: set[str]) -> None:
        self.lan = lan
        self.nodes = nodes
        self.everyone = everyone
        self.conductor: str | None = None
        self.docs: list[dict[str, Any]] = []
        self.polls = 0
        self.violations: list[str] = []
        self.moment = "before the kill"
        """What the test is at, for the violations' messages."""

    def read(self) -> list[dict[str, Any]]:
        self.docs = [self.lan.get_json(host, url + "/api/status") for host, url in self.nodes]
        return self.docs

    def whole(self) -> bool:
        """Whether every view holds everyone alive and one conductor, the same everywhere, and
        the federation's time has one reference that every other node is synced to (until the
        site tops meet, each is its site's reference; the one that then follows the other
        relearns it, and says so, for a moment)."""
        references = sum(bool(d["clock"]["is_reference"]) for d in self.docs)
        return references == 1 and all(
            {m["path"] for m in d["members"] if m["state"] == "alive"} == self.everyone
            and sum(m["conductor"] for m in d["members"]) == 1
            and d["conductor"] == self.docs[0]["conductor"] is not None
            and keeps_time(d)
            for d in self.docs
        )

    def poll(self) -> list[dict[str, Any]]:
        """Read every view and record any member lost or conductor changed."""
        docs = self.read()
        self.polls += 1
        for d in docs:
            alive = {m["path"] for m in d["members"] if m["state"] == "alive"}
            flagged = [m["path"] for m in d["members"] if m["conductor"]]
            if alive != self.everyone:
                self.violations.append(f"{d['node']['path']} lost {self.everyone - alive}")
            if not keeps_time(d):
                clocks = {
                    e["node"]["path"]: {
                        k: e["clock"][k]
                        for k in ("reference", "is_reference", "synced", "error_bound")
                    }
                    for e in docs
                }
                self.violations.append(
                    f"{d['node']['path']} lost the federation's time "
                    f"(poll {self.polls}, {self.moment}: {clocks})"
                )
            if d["conductor"] != self.conductor or flagged != [self.conductor]:
                self.violations.append(
                    f"{d['node']['path']}: conductor {d['conductor']}, flagged {flagged}, "
                    f"not {self.conductor}"
                )
        return docs


def on(doc: dict[str, Any], url: str) -> bool:
    """Whether the node's bridge uses the registry at *url* and its last exchange worked."""
    registry = doc["registry"]
    return bool(registry["url"] == url and registry["state"] == "connected")


def test_killing_the_registry_in_use_moves_every_bridge_and_loses_nothing(
    tmp_path: Path,
) -> None:
    with Lan(7) as lan:
        db_host, reg_hosts = lan.hosts[0], lan.hosts[1:3]
        sites = {"a": lan.hosts[3:5], "b": lan.hosts[5:7]}
        cluster = Cluster(listen=db_host.address, netns=db_host.netns)
        with contextlib.ExitStack() as stack:
            stack.callback(cluster.stop)
            db = cluster.new_database("fleet")
            migrated = in_netns(db_host.netns, lambda: registry_command("migrate", "--db", db))
            assert migrated.returncode == 0, migrated.stderr
            registries = start_registries(lan, reg_hosts, db)
            urls = [url for _, url in registries]
            nodes: list[tuple[Host, str]] = []
            for orchestra, hosts in sites.items():
                for host in hosts:
                    _, status_url = start_node(
                        lan, host, tmp_path, orchestra, ",".join(urls), "--conductor"
                    )
                    nodes.append((host, status_url))
            everyone = {f"/{o}/h{h.index}" for o, hosts in sites.items() for h in hosts}
            views = Views(lan, nodes, everyone)

            def merged_on_the_first() -> bool:
                docs = views.read()
                return views.whole() and all(
                    on(d, urls[0]) and d["registry"]["registered_as"] == d["node"]["path"]
                    for d in docs
                )

            wait_until(merged_on_the_first, 60, "both sites merged, every bridge on registry 1")
            views.conductor = views.docs[0]["conductor"]

            client = FleetClient(db_host, urls, tmp_path / "client.log")
            stack.callback(client.close)
            client.start()
            wait_until(lambda: views.poll() and client.acknowledged() >= 40, 20, "load acked")

            # kill -9 the registry every bridge uses, mid-concert
            registry_1 = registries[0][0]
            acked_before = client.acknowledged()
            killed_wall, killed = time.time(), time.monotonic()
            registry_1.kill()
            views.moment = "after the kill"

            wait_until(
                lambda: all(on(d, urls[1]) for d in views.poll()),
                SWITCH_WITHIN + 5,
                "every bridge on registry 2",
                every=0.05,
            )
            moved_after = time.monotonic() - killed
            views.moment = f"{moved_after:.2f} s after the kill, every bridge moved"
            assert moved_after <= SWITCH_WITHIN, f"bridges moved after {moved_after:.2f} s"
            assert all(d["registry"]["switches"] == 1 for d in views.docs), [
                d["registry"] for d in views.docs
            ]

            # The nodes' registrations, refreshed through registry 2 since the kill; the
            # client keeps writing through it.
            def refreshed() -> bool:
                views.poll()
                view = lan.get_json(db_host, f"{urls[1]}/api/v1/federations/{FEDERATION}")
                seen = {n["path"]: n["last_seen"] for o in view["orchestras"] for n in o["nodes"]}
                return (
                    set(seen) == everyone
                    and min(seen.values()) > killed_wall
                    and client.acknowledged() >= acked_before + 40
                )

            wait_until(refreshed, 20, "registrations refreshed through registry 2")
            problems = client.stop_and_check(survivor=1)
            views.poll()

    assert problems == [], problems
    assert client.up is not None and client.up.moves >= 1  # its workers on registry 1 moved
    assert views.violations == [], views.violations[:10]
    assert views.polls >= 10
    print(
        f"bridges on registry 2 {moved_after:.2f} s after the kill; {views.polls} polls of 4 "
        f"views; {client.acknowledged()} writes acknowledged ({acked_before} before the kill)"
    )
