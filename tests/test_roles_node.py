"""Roles wired into real in-process nodes (loopback, seeds, no mDNS or broadcast, a federation
key, an operator key): the conductor relays operators' signed orders to stations; typed errors
cross the mesh; the desired state is replicated and restored; the ``stagemesh roles`` command
talks to a node's HTTP API with the node's secret."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import trio

import roles
from mesh.__main__ import main as stagemesh
from mesh._cli import UsageError
from mesh._node import Node, NodeConfig, RemoteError, open_node
from mesh._state import write_json_atomic
from mesh._status import read_api_secret
from mesh._wire import Keyring, Value
from roles import (
    BackoffPolicy,
    BlockedRole,
    NotConductor,
    OperatorKey,
    OperatorKeyring,
    RoleConfig,
    RolesConfig,
    RolesExtension,
    StaleOrder,
    StationFile,
    push_config,
    roles_extension_factory,
)
from tests.harness import wait_for
from tests.livenodes import loopback_config

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]
FAST = BackoffPolicy(base=0.1, max_delay=0.5)
FEDERATION_KEY = Keyring.single(b"rolesnode-federation-key-32bytes")
OPERATOR = OperatorKey.generate()


def sleeper(*uuids: str, timestamp: int = 1000) -> RoleConfig:
    """A configuration of harmless `command` instances."""
    return RoleConfig.from_dict(
        {"command": {u: {"timestamp": timestamp, "command": SLEEP} for u in uuids}}
    )


def extension(station: bool) -> RolesExtension:
    station_file = (
        StationFile(blocked_roles=frozenset({"stream"}), variables={"room": "a"})
        if station
        else None
    )
    return RolesExtension(
        station_file,
        backoff=FAST,
        operator_keys=OperatorKeyring((OPERATOR.public(),)),
        meta_interval=0.05,
        manager_interval=0.3,
        sync_interval=0.5,
    )


def config(
    tmp: Path,
    path: str,
    ext: RolesExtension,
    seeds: tuple[tuple[str, int], ...] = (),
    conductor: bool = False,
) -> NodeConfig:
    return loopback_config(
        tmp,
        path,
        federation="rolesnode",
        seeds=seeds,
        conductor=conductor,
        extensions=(ext,),
        keyring=FEDERATION_KEY,
    )


class Group:
    """Nodes and their roles extensions, by path; each node runs in its own task so any one
    can stop first."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.nodes: dict[str, Node] = {}
        self.exts: dict[str, RolesExtension] = {}
        self.stops: dict[str, trio.Event] = {}
        self.done: dict[str, trio.Event] = {}

    def station(self, path: str) -> roles.Station:
        station = self.exts[path].station
        assert station is not None
        return station

    async def start(self, node_config: NodeConfig, ext: RolesExtension) -> Node:
        path = f"/{node_config.orchestra}/{node_config.name}"
        self.stops[path], self.done[path] = trio.Event(), trio.Event()

        async def run(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                async with open_node(node_config) as node:
                    task_status.started(node)
                    await self.stops[path].wait()
            finally:
                self.done[path].set()

        node: Node = await self.nursery.start(run)
        self.nodes[path], self.exts[path] = node, ext
        return node

    async def stop(self, path: str) -> None:
        self.stops[path].set()
        with trio.fail_after(10):
            await self.done[path].wait()
        del self.nodes[path]


@asynccontextmanager
async def group(tmp: Path, candidates: list[str], stations: list[str]) -> AsyncIterator[Group]:
    """Start the candidates (the first one first, so it conducts) and the stations; yield
    once every node sees every other alive and the first candidate conducts."""
    async with trio.open_nursery() as nursery:
        out = Group(nursery)
        seeds: tuple[tuple[str, int], ...] = ()
        for path in [*candidates, *stations]:
            ext = extension(station=path in stations)
            node = await out.start(config(tmp, path, ext, seeds, path in candidates), ext)
            seeds = seeds or (node.address,)

        def settled() -> bool:
            for node in out.nodes.values():
                alive = sum(m.status == "alive" for m in node.members())
                if alive != len(out.nodes) or node.conductor != candidates[0]:
                    return False
                for path in stations:
                    member = node.member(path)
                    if member is None or "d" not in member.meta:
                        return False
            return True

        try:
            await wait_for(settled, 20, "every node alive, a conductor, station metadata")
            yield out
        finally:
            for path in reversed(list(out.nodes)):
                out.stops[path].set()


def pids(station: roles.Station) -> dict[str, int | None]:
    return {f"{s.role}/{s.uuid}": s.pid for s in station.snapshot().processes}


async def test_push_through_conductor_runs_and_a_blocked_role_is_typed(tmp_path: Path) -> None:
    async with group(tmp_path, ["/ctl/c1"], ["/room-a/s1", "/room-b/s2"]) as g:
        conductor, s1 = g.nodes["/ctl/c1"], g.nodes["/room-a/s1"]
        # Pushed from any node (here the station itself) through the conductor.
        answer = await push_config(
            s1, "/room-a/s1", sleeper("cam-1", "cam-2"), operator_key=OPERATOR
        )
        assert answer["applied"] is True and answer["station"] == "/room-a/s1"
        assert sorted(answer["started"]) == ["command/cam-1", "command/cam-2"]
        station = g.station("/room-a/s1")
        running = {s.uuid: s for s in station.snapshot().processes}
        assert {u: s.state for u, s in running.items()} == {"cam-1": "running", "cam-2": "running"}
        assert all(s.pid is not None and roles.process_group_alive(s.pid) for s in running.values())
        assert station.config.digest() == answer["digest"]

        # Every node sees the station's roles summary and identity in its member record.
        def summary_seen() -> bool:
            member = conductor.member("/room-a/s1")
            assert member is not None
            return member.meta.get("r") == {"command": {"configured": 2, "running": 2, "failed": 0}}

        await wait_for(summary_seen, 5, "the roles summary in the conductor's view")
        member = conductor.member("/room-a/s1")
        assert member is not None
        assert member.meta["i"] == station.identity.to_meta()
        assert member.meta["d"] == answer["digest"]
        assert len(msgpack.packb({k: member.meta[k] for k in "rid"})) <= roles.META_BUDGET
        status = conductor.status()
        assert status["roles"]["manager"]["active"] is True
        # The status API and the conductor's dashboard show the station's roles.
        seen = {m["path"]: m["roles"] for m in status["members"]}
        assert seen["/room-a/s1"] == {"command": {"configured": 2, "running": 2, "failed": 0}}
        assert conductor.status_url is not None
        async with httpx.AsyncClient() as client:
            page = (await client.get(conductor.status_url + "/")).text
        assert "command 2/2" in page
        # The station's identity wherever it is listed: the manager's view, the members'
        # identities, the dashboard's member table.
        identity = station.identity.to_dict()
        for seen in (
            status["roles"]["manager"]["stations"]["/room-a/s1"]["identity"],
            status["roles"]["identities"]["/room-a/s1"],
        ):
            assert (seen["hostname"], seen["mac"]) == (identity["hostname"], identity["mac"])
            assert set(seen["addresses"]) <= set(identity["addresses"])  # as many as fit
        assert identity["hostname"] in page and (identity["mac"] or "no MAC") in page
        assert status["roles"]["station"] is None  # a conductor without --roles: manager only
        view = status["roles"]["manager"]["stations"]["/room-a/s1"]
        assert view["in_sync"] is True and view["answer"]["applied"] is True
        assert [m["roles"] for m in status["members"] if m["path"] == "/room-a/s1"] == [
            {"command": {"configured": 2, "running": 2, "failed": 0}}
        ]

        # A blocked role: the sender gets the typed error naming role and uuid; nothing changes.
        before = (pids(station), station.config, g.exts["/ctl/c1"].desired)
        blocked = sleeper("cam-1", "cam-2").merge(
            RoleConfig.from_dict({"stream": {"hall-a": {"timestamp": 1, "command": SLEEP}}})
        )
        with pytest.raises(BlockedRole) as refused:
            await push_config(s1, "/room-a/s1", blocked, operator_key=OPERATOR)
        assert "'stream'" in str(refused.value) and "'hall-a'" in str(refused.value)
        assert (pids(station), station.config, g.exts["/ctl/c1"].desired) == before
        last = conductor.status()["roles"]["manager"]["stations"]["/room-a/s1"]["last_push"]
        assert last["error_type"] == "BlockedRole" and last["applied"] is False
        assert last["error_family"] == "BlockedRole"

        # A station that is not live: the desired configuration is kept, to push later.
        pending = await push_config(s1, "/room-c/later", sleeper("cam-9"), operator_key=OPERATOR)
        assert pending["pending"] is True and pending["error_type"] == "NoSuchMember"
        later = conductor.status()["roles"]["manager"]["stations"]["/room-c/later"]
        assert later["live"] is False and later["digest"] == pending["digest"]

        # roles.push sent to a node that does not conduct names the conductor.
        with pytest.raises(RemoteError) as not_conductor:
            payload: Value = {"station": "/room-a/s1", "config": {}}
            await s1.request("/room-b/s2", "roles.push", payload)
        assert not_conductor.value.error_type == "NotConductor"
        assert "/ctl/c1" in not_conductor.value.message
        error = roles.remote_error("NotConductor", not_conductor.value.message)
        assert isinstance(error, NotConductor)


async def test_desired_state_is_replicated_restored_and_survives_the_conductor(
    tmp_path: Path,
) -> None:
    async with group(tmp_path, ["/ctl/c1", "/ctl/c2"], ["/room-a/s1"]) as g:
        c1, s1 = g.nodes["/ctl/c1"], g.nodes["/room-a/s1"]
        wanted = sleeper("cam-1")
        answer = await push_config(c1, "/room-a/s1", wanted, operator_key=OPERATOR)
        digest = answer["digest"]
        standby = g.exts["/ctl/c2"]
        await wait_for(
            lambda: standby.desired.config_for("/room-a/s1").digest() == digest,
            5,
            "the desired configuration replicated to the standby",
        )
        saved = tmp_path / "state" / "rolesnode" / "ctl" / "c2" / "roles" / "desired.json"
        await wait_for(saved.exists, 5, "the standby saving the desired state")
        on_disk = json.loads(saved.read_text())["desired"]
        assert roles.DesiredState.from_dict(on_disk).config_for("/room-a/s1").digest() == digest

        # The station's own operator changes it through the local API: the newest change
        # wins, so the conductor's older orders are refused (StaleOrder) until an operator
        # pushes again, which restores the desired configuration.
        station = g.station("/room-a/s1")
        other = sleeper("other", timestamp=5)
        assert s1.status_url is not None
        secret = read_api_secret(tmp_path / "run", s1.id)
        async with httpx.AsyncClient() as client:
            local = await client.post(
                s1.status_url + "/api/request",
                json={
                    "path": "/room-a/s1",
                    "kind": "roles.apply",
                    "payload": {"config": other.to_dict()},
                },
                headers={"Authorization": f"Bearer {secret}"},
            )
        assert local.json()["ok"] is True, local.text
        assert station.config.digest() != digest and station.source == "local"

        def refused_as_stale() -> bool:
            answer = c1.status()["roles"]["manager"]["stations"]["/room-a/s1"]["answer"]
            return bool(answer and answer["error_type"] == StaleOrder.wire_name)

        await wait_for(refused_as_stale, 10, "the station refusing the conductor's older orders")
        assert station.config.digest() != digest
        await push_config(c1, "/room-a/s1", wanted, operator_key=OPERATOR)

        def restored() -> bool:
            running = [(s.uuid, s.state) for s in station.snapshot().processes]
            return station.config.digest() == digest and running == [("cam-1", "running")]

        await wait_for(restored, 10, "a new operator push restoring the station")
        pid = pids(station)["command/cam-1"]
        assert pid is not None

        # The conductor leaves: the standby conducts and pushes the same desired configuration.
        await g.stop("/ctl/c1")
        c2 = g.nodes["/ctl/c2"]
        await wait_for(lambda: c2.conductor == "/ctl/c2", 10, "the standby conducting")
        again = await push_config(s1, "/room-a/s1", wanted, operator_key=OPERATOR)
        assert again["applied"] is True and again["digest"] == digest
        assert again["unchanged"] == ["command/cam-1"] and pids(station)["command/cam-1"] == pid
        assert c2.status()["roles"]["manager"]["active"] is True
        await wait_for(
            lambda: c2.status()["roles"]["manager"]["stations"]["/room-a/s1"]["in_sync"],
            5,
            "the new conductor reporting the station in sync",
        )


async def test_station_requests_and_the_roles_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAGEMESH_RUNTIME_DIR", str(tmp_path / "run"))
    key_file = tmp_path / "operator.key"
    OPERATOR.write(key_file)
    async with group(tmp_path, ["/ctl/c1"], ["/room-a/s1"]) as g:
        c1 = g.nodes["/ctl/c1"]
        url = c1.status_url
        assert url is not None
        pushed = tmp_path / "push.json"
        pushed.write_text(
            json.dumps(
                {
                    "command": {
                        "cam-1": {
                            "command": [*SLEEP[:2], "print('hello'); import time; time.sleep(60)"]
                        }
                    }
                }
            )
        )

        async def cli(*argv: str) -> tuple[int, str, str]:
            root = logging.getLogger()
            saved = (root.handlers[:], root.level)
            try:
                code = await trio.to_thread.run_sync(
                    stagemesh, ["--log-level", "error", "roles", *argv, "--node", url]
                )
            finally:
                root.handlers[:], root.level = saved[0], saved[1]
            out, err = capsys.readouterr()
            return code, out, err

        code, out, err = await cli("push", str(pushed), "--station", "/room-a/s1")
        assert code == 1 and err.startswith("error: Unauthorized: ")  # no operator key
        signed = ("--operator-key", str(key_file))
        code, out, err = await cli("push", str(pushed), "--station", "/room-a/s1", *signed)
        assert (code, err) == (0, "") and "/room-a/s1: applied" in out
        station = g.station("/room-a/s1")
        await wait_for(
            lambda: "hello" in station.logs("command", "cam-1"), 10, "the instance printing"
        )
        code, out, _ = await cli(
            "logs", "--station", "/room-a/s1", "--role", "command", "--uuid", "cam-1"
        )
        assert code == 0 and "hello" in out.splitlines()
        code, out, err = await cli("stop", "--station", "/room-a/s1", "--role", "command")
        assert code == 1 and "Unauthorized" in err  # another machine's station: a key is needed
        code, out, _ = await cli("stop", "--station", "/room-a/s1", "--role", "command", *signed)
        assert code == 0 and "stopped" in out
        assert {s.state for s in station.snapshot().processes} == {"stopped"}
        code, out, _ = await cli("start", "--station", "/room-a/s1", *signed)
        assert code == 0 and "running" in out
        code, out, _ = await cli("show")
        assert code == 0 and "conductor=/ctl/c1" in out and "/room-a/s1" in out
        assert station.identity.hostname in out  # the station's identity, seen from afar
        code, out, _ = await cli("show", "--station", "/room-a/s1", "--json")
        assert code == 0 and json.loads(out)["config"]["command"]["cam-1"]["command"][0] == SLEEP[0]
        # Typed errors are one line and exit 1; usage errors exit 2.
        code, out, err = await cli("logs", "--station", "/room-a/s1", "--role", "x", "--uuid", "y")
        assert code == 1 and err.startswith("error: InvalidRequest: ") and err.count("\n") == 1
        code, _, err = await cli("stop", "--station", "room-a")
        assert code == 2 and "/<orchestra>/<name>" in err
        bad = tmp_path / "bad.json"
        bad.write_text('{"command": {"x": {"timestamp": "soon"}}}')
        code, _, err = await cli("push", str(bad), "--station", "/room-a/s1")
        assert code == 2 and "bad.json: at $.command.x.timestamp" in err


def test_factory_builds_the_extension_for_stations_and_candidates(tmp_path: Path) -> None:
    def build(roles_file: Path | None, conductor: bool = False) -> RolesExtension | None:
        node = NodeConfig(name="s1", conductor=conductor, state_dir=tmp_path / "state")
        return roles_extension_factory(RolesConfig(station_file=roles_file), node)

    assert build(None) is None
    manager_only = build(None, conductor=True)
    assert manager_only is not None and manager_only.station_file is None
    assert set(manager_only.handlers()) == set(roles.MANAGER_KINDS)
    good = tmp_path / "station.json"
    good.write_text(json.dumps({"blocked_roles": ["stream"], "roles": {}}))
    station = build(good)
    assert station is not None and station.name == "roles"
    assert station.station_file is not None
    assert station.station_file.blocked_roles == {"stream"}
    assert {"roles.apply", "roles.logs", "roles.check", "roles.push"} <= set(station.handlers())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"roles": {"command": {"x": {"timestamp": "soon"}}}}))
    with pytest.raises(UsageError, match=r"bad\.json: at \$\.roles\.command\.x\.timestamp"):
        build(bad)
    blocked = tmp_path / "blocked.json"
    blocked.write_text(
        json.dumps({"blocked_roles": ["stream"], "roles": {"stream": {"h": {"command": "x"}}}})
    )
    with pytest.raises(UsageError, match=r"BlockedRole: role 'stream'"):
        build(blocked)


def test_station_meta_stays_under_budget() -> None:
    identity = {"h": "h" * 64, "m": "aa:bb:cc:dd:ee:ff", "a": ["10.0.0.1", "fe80::1" * 3]}
    summary = {f"role-{i:02d}": {"configured": 4, "running": 3, "failed": 1} for i in range(12)}
    meta = roles.station_meta(summary, identity, "0123456789abcdef")
    assert len(msgpack.packb(meta)) <= roles.META_BUDGET
    ident = meta["i"]
    assert isinstance(ident, dict) and ident["h"] == "h" * 64 and meta["d"] == "0123456789abcdef"
    small = roles.station_meta(
        {"record": {"configured": 1, "running": 1, "failed": 0}}, identity, "d"
    )
    assert small["r"] == {"record": {"configured": 1, "running": 1, "failed": 0}}


def test_the_node_command_accepts_roles(tmp_path: Path) -> None:
    from mesh.__main__ import commands

    station = tmp_path / "station.json"
    station.write_text(json.dumps({"roles": {}}))
    node = next(c for c in commands() if c.name == "node")
    parser = argparse.ArgumentParser()
    node.configure(parser)
    parsed = parser.parse_args(["--roles", str(station), "--name", "s1", "--orchestra", "r"])
    built = node.config(parsed)  # type: ignore[attr-defined]
    assert [e.name for e in built.extensions] == ["roles"]
    ext = built.extensions[0]
    assert isinstance(ext, RolesExtension) and ext.station_file is not None


def test_saved_desired_state_is_loaded_and_a_bad_file_ignored(tmp_path: Path) -> None:
    order = OPERATOR.sign(roles.Order.for_config("rolesnode", "/room-a/s1", sleeper("cam-1")))
    state = roles.DesiredState().with_order(order)
    saved = tmp_path / roles.DESIRED_FILE_NAME
    saved.write_text(json.dumps({"format": 2, "desired": state.to_dict()}))
    assert RolesExtension._load_desired(saved) == state
    saved.write_text('{"format": 2, "desired": {"stations": {"nope": []}}}')
    assert RolesExtension._load_desired(saved) == roles.DesiredState()
    assert RolesExtension._load_desired(tmp_path / "missing.json") == roles.DesiredState()


async def test_a_push_is_acknowledged_only_once_the_desired_state_holding_it_is_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conductor killed just after it answered a push must not lose the pushed order: the
    answer waits for the save (here made slow), so the order is on disk when it comes."""

    def slow_write(path: Path, doc: Any) -> None:
        time.sleep(0.5)  # in the save's worker thread: a slow disk
        write_json_atomic(path, doc)

    monkeypatch.setattr("roles._extension.write_json_atomic", slow_write)
    async with group(tmp_path, ["/ctl/c1"], []) as g:
        answer = await push_config(
            g.nodes["/ctl/c1"], "/room-b/absent", sleeper("cam-9"), operator_key=OPERATOR
        )
        assert answer["pending"] is True, answer
        saved = tmp_path / "state" / "rolesnode" / "ctl" / "c1" / "roles" / "desired.json"
        on_disk = json.loads(saved.read_text())["desired"]
        kept = roles.DesiredState.from_dict(on_disk).config_for("/room-b/absent")
        assert kept.digest() == answer["digest"]
