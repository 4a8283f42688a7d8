"""Manager = conductor with real ``stagemesh node`` processes on loopback: two conductor
candidates and three stations in two rooms (``--roles FILE``), a federation key and an
operator key, driven by the ``stagemesh roles`` command as a user would. Harmless sleeping
commands stand in for recorders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from roles import process_group_alive
from tests.harness import wait_for
from tests.livenodes import LiveNode, start_nodes

pytestmark = pytest.mark.slow

NAMES = ["c1", "c2", "s1", "s2", "s3"]
ORCHESTRA = {"c1": "ctl", "c2": "ctl", "s1": "room-a", "s2": "room-a", "s3": "room-b"}
STATIONS = ["/room-a/s1", "/room-a/s2", "/room-b/s3"]
SLEEP = [sys.executable, "-c", "import sys, time; time.sleep(120)"]


def path_of(node: LiveNode) -> str:
    return f"/{ORCHESTRA[node.name]}/{node.name}"


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


async def cli(tmp: Path, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``stagemesh <argv>`` as a user of this machine would (a separate process that
    finds the nodes, and their secrets, in their runtime folder), with *env* added."""
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "mesh", "--log-level", "warning", *argv],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "STAGEMESH_RUNTIME_DIR": str(tmp / "run"), **(env or {})},
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def keys(tmp: Path) -> tuple[list[str], list[str]]:
    """A federation key and an operator key pair: the node flags that trust them, and the
    ``stagemesh roles`` flag that signs with the operator key."""
    for argv in (("keygen", str(tmp / "fed.key")), ("keygen", "--operator", str(tmp / "op.key"))):
        code, _, err = await cli(tmp, *argv)
        assert code == 0, err
    node = ["--key-file", str(tmp / "fed.key"), "--operator-keys", str(tmp / "op.key.pub")]
    return node, ["--operator-key", str(tmp / "op.key")]


def instances(doc: dict[str, Any]) -> dict[str, tuple[str, int | None]]:
    """role/uuid -> (state, pid) of a station's status document."""
    station = doc["roles"]["station"]
    return {f"{i['role']}/{i['uuid']}": (i["state"], i["pid"]) for i in station["instances"]}


async def test_conductor_manages_stations_and_a_standby_takes_over(tmp_path: Path) -> None:
    room_a = write(tmp_path / "room-a.json", {"variables": {"room": "room-a"}, "roles": {}})
    room_b = write(
        tmp_path / "room-b.json",
        {"blocked_roles": ["stream"], "variables": {"room": "room-b"}, "roles": {}},
    )
    config = {
        "record": {
            "cam": {
                "device": "/dev/video0",
                "output_dir": "recordings",
                "command": [*SLEEP, "$room", "$device"],
            }
        },
        "command": {"heartbeat": {"command": [*SLEEP, "$hostname"]}},
    }
    pushed = write(tmp_path / "push.json", config)
    blocked = write(
        tmp_path / "blocked.json",
        {**config, "stream": {"hall": {"source": "x", "url": "rtmp://y/z", "command": SLEEP}}},
    )

    trusted, signed = await keys(tmp_path)

    def args(index: int, name: str) -> list[str]:
        extra = ["--no-mdns", "--orchestra", ORCHESTRA[name], *trusted]
        if name.startswith("c"):
            return [*extra, "--conductor"]
        return [*extra, "--roles", str(room_b if name == "s3" else room_a)]

    async with start_nodes(tmp_path, NAMES, args) as nodes:
        by_path = {path_of(n): n for n in nodes}
        stations = [by_path[p] for p in STATIONS]
        conductor = ""

        async def agreed() -> bool:
            nonlocal conductor
            docs = [await n.status() for n in nodes]
            views = {d["conductor"] for d in docs}
            alive = [sum(m["state"] == "alive" for m in d["members"]) for d in docs]
            conductor = docs[0]["conductor"] or ""
            return len(views) == 1 and conductor in ("/ctl/c1", "/ctl/c2") and min(alive) == 5

        await wait_for(agreed, 30, every=0.1, what="5 nodes and one conductor")
        standby = by_path["/ctl/c2" if conductor == "/ctl/c1" else "/ctl/c1"]

        # Push through any node (a station's API): the CLI finds the conductor.
        station_args = [a for p in STATIONS for a in ("--station", p)]
        code, out, err = await cli(
            tmp_path,
            "roles",
            "push",
            str(pushed),
            *station_args,
            "--node",
            stations[0].status_url,
            *signed,
        )
        assert code == 0, err
        assert [line.split(":")[0] for line in out.splitlines()] == STATIONS
        assert all("started 2" in line for line in out.splitlines())
        before: dict[str, dict[str, tuple[str, int | None]]] = {}
        for node in stations:
            running = instances(await node.status())
            assert set(running) == {"record/cam", "command/heartbeat"}
            assert {state for state, _ in running.values()} == {"running"}
            before[node.name] = running

        # A blocked role: the CLI prints the typed error on one line, exits 1; nothing changes.
        s3 = by_path["/room-b/s3"]
        digest = (await s3.status())["roles"]["station"]["config_digest"]
        code, out, err = await cli(
            tmp_path,
            "roles",
            "push",
            str(blocked),
            "--station",
            "/room-b/s3",
            "--node",
            s3.status_url,
            *signed,
        )
        assert code == 1
        assert err.startswith("error: BlockedRole: role 'stream' is blocked on this station")
        assert "'hall'" in err and err.count("\n") == 1
        after = await s3.status()
        assert instances(after) == before["s3"]
        assert after["roles"]["station"]["config_digest"] == digest

        # The standby holds a replica of the desired state.
        async def replicated() -> bool:
            mine = (await standby.status())["roles"]["manager"]
            theirs = (await by_path[conductor].status())["roles"]["manager"]
            return set(mine["stations"]) == set(STATIONS) and mine["digest"] == theirs["digest"]

        await wait_for(replicated, 10, what="the desired state replicated to the standby")

        # kill -9 the conductor: the standby conducts and pushes the same configuration.
        by_path[conductor].kill()

        async def standby_conducts() -> bool:
            return bool((await standby.status())["conductor"] == path_of(standby))

        took = await wait_for(standby_conducts, 6, every=0.05, what="the standby conducting")
        print(f"the standby conducted {took:.2f} s after the kill")
        code, out, err = await cli(
            tmp_path,
            "roles",
            "push",
            str(pushed),
            *station_args,
            "--node",
            standby.status_url,
            *signed,
        )
        assert code == 0, err
        assert all("unchanged 2" in line for line in out.splitlines())

        async def in_sync() -> bool:
            view = (await standby.status())["roles"]["manager"]
            return view["active"] and all(view["stations"][p]["in_sync"] for p in STATIONS)

        await wait_for(in_sync, 10, what="the new conductor reporting every station in sync")
        code, out, _ = await cli(tmp_path, "roles", "show", "--node", standby.status_url)
        assert code == 0 and f"conductor={path_of(standby)}" in out
        for node in stations:
            assert instances(await node.status()) == before[node.name]  # same processes

        # Stations stop cleanly: no role process outlives its node.
        pids = [pid for run in before.values() for _, pid in run.values() if pid is not None]
        assert len(pids) == 6 and all(process_group_alive(pid) for pid in pids)
        for node in stations:
            node.terminate()
        with trio.fail_after(15):
            for node in stations:
                assert await node.process.wait() == 0

        async def no_orphans() -> bool:
            return not any(process_group_alive(pid) for pid in pids)

        await wait_for(no_orphans, 5, what="every role process gone")


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    """Usage errors exit 2 with a one-line reason (no node needed)."""
    done = subprocess.run(
        [sys.executable, "-m", "mesh", "roles", "push", "x.json", "--station", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "/<orchestra>/<name>" in done.stderr


async def test_a_role_removed_by_a_push_stays_removed_after_a_restart_with_no_manager(
    tmp_path: Path,
) -> None:
    """Issue #16, item 1, live: a station started with a file of two roles gets a push that
    removes one; stopped and started again with no manager reachable, it runs what was pushed,
    not its older file."""
    trusted, signed = await keys(tmp_path)
    entry = {"timestamp": 1718000000000, "command": SLEEP}
    station_file = write(
        tmp_path / "station.json", {"roles": {"command": {"keep": entry, "drop": entry}}}
    )
    station = ["--no-mdns", "--roles", str(station_file), *trusted]

    def args(index: int, name: str) -> list[str]:
        return ["--no-mdns", "--conductor", *trusted] if name == "c1" else station

    async with start_nodes(tmp_path, ["c1", "s1"], args) as (c1, s1):

        async def ready() -> bool:
            doc = await s1.status()
            return doc["conductor"] == "/o1/c1" and set(instances(doc)) == {
                "command/keep",
                "command/drop",
            }

        await wait_for(ready, 30, every=0.1, what="the conductor and the station's file roles")
        pushed = write(tmp_path / "push.json", {"command": {"keep": {"command": SLEEP}}})
        code, out, err = await cli(
            tmp_path, "roles", "push", str(pushed), "--station", "/o1/s1",
            "--node", c1.status_url, *signed,
        )  # fmt: skip
        assert code == 0 and "stopped 1" in out, err
        assert set(instances(await s1.status())) == {"command/keep"}
        for node in (s1, c1):
            node.terminate()
            with trio.fail_after(15):
                assert await node.process.wait() == 0

    async with start_nodes(tmp_path, ["s1"], station) as (again,):
        doc = await again.status()
        assert doc["conductor"] is None  # nobody to push anything
        assert set(instances(doc)) == {"command/keep"}
        assert doc["roles"]["station"]["source"] == "conductor"
