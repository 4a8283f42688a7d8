"""``stagemesh roles`` as a crew member meets it, with real ``stagemesh node`` processes on
loopback (issue #20, item 7): another federation's node on the same machine, a mistyped
station, forgetting a station (signed, replicated), and why a role cannot start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.harness import wait_for
from tests.livenodes import LiveNode, start_nodes
from tests.test_roles_live import cli, keys, write

pytestmark = pytest.mark.slow

SLEEP = ["sleep", "120"]
GHOST = "stagemesh-no-such-program"


def conf_args(trusted: list[str], station: Path) -> Any:
    """Flags of the conference federation ``conf``: candidates c1, c2 in ``ctl``; cam1 a
    station of room-a."""

    def args(index: int, name: str) -> list[str]:
        common = ["--no-mdns", "--federation", "conf", *trusted]
        if name.startswith("c") and name != "cam1":
            return [*common, "--orchestra", "ctl", "--conductor"]
        return [*common, "--orchestra", "room-a", "--roles", str(station)]

    return args


async def settled(nodes: list[LiveNode], candidates: set[str], stations: list[str]) -> str:
    """Every node sees every other alive and the same one of *candidates* conducting, the
    stations announce; return the conductor's path."""
    views: set[str | None] = set()

    async def check() -> bool:
        views.clear()
        for node in nodes:
            doc = await node.status()
            alive = {m["path"] for m in doc["members"] if m["state"] == "alive"}
            views.add(doc["conductor"])
            if len(alive) != len(nodes) or doc["conductor"] not in candidates:
                return False
            if not all(doc["roles"]["identities"].get(s) for s in stations):
                return False
        return len(views) == 1

    await wait_for(check, 30, every=0.1, what=f"{len(nodes)} nodes and one conductor")
    (conductor,) = views
    assert conductor is not None
    return conductor


async def test_roles_picks_the_node_of_the_stations_federation_or_asks(tmp_path: Path) -> None:
    trusted, signed = await keys(tmp_path)
    station = write(tmp_path / "station.json", {"roles": {}})
    pushed = write(tmp_path / "push.json", {"command": {"rec": {"command": SLEEP}}})
    async with start_nodes(tmp_path, ["c1", "cam1"], conf_args(trusted, station)) as conf:
        await settled(conf, {"/ctl/c1"}, ["/room-a/cam1"])
        # Another federation's node on the same machine: no conductor, and its own stations.
        other = ["--no-mdns", "--federation", "other", "--orchestra", "room-b"]
        async with start_nodes(tmp_path, ["o1"], other) as (o1,):
            await wait_for(o1.status, 10, what="the other federation's node answering")
            code, out, err = await cli(
                tmp_path, "roles", "push", str(pushed), "--station", "/room-a/cam1", *signed
            )
            assert (code, err) == (0, ""), err
            assert out.startswith("/room-a/cam1: applied ") and "started 1" in out
            doc = await conf[1].status()
            assert {i["uuid"] for i in doc["roles"]["station"]["instances"]} == {"rec"}

            # Nothing tells which federation: the command asks, listing what it found.
            code, out, err = await cli(tmp_path, "roles", "show")
            assert code == 2 and err.count("\n") == 1, err
            assert "nodes of 2 federations run on this machine" in err
            assert "conf (/ctl/c1, /room-a/cam1)" in err and "other (/room-b/o1)" in err
            assert "--federation" in err
            code, out, err = await cli(tmp_path, "roles", "show", "--federation", "other")
            assert code == 0 and "conductor=none" in out, err
            code, out, _ = await cli(tmp_path, "roles", "show", "--federation", "conf")
            assert code == 0 and "conductor=/ctl/c1" in out and "/room-a/cam1" in out
            code, _, err = await cli(tmp_path, "roles", "show", "--federation", "nope")
            assert code == 2 and "no node of federation 'nope' runs on this machine" in err
            # A station neither federation knows: ask, and say so.
            code, out, err = await cli(
                tmp_path, "roles", "push", str(pushed), "--station", "/room-a/cam9", *signed
            )
            assert code == 2 and "none of them knows /room-a/cam9" in err, err
            # STAGEMESH_FEDERATION works as the flag does.
            code, out, err = await cli(
                tmp_path, "roles", "show", "--station", "/room-a/cam1", "--json",
                env={"STAGEMESH_FEDERATION": "conf"},
            )  # fmt: skip
            assert code == 0 and json.loads(out)["config"]["command"]["rec"], err


async def test_a_push_to_a_mistyped_station_is_pending_and_forget_removes_it_everywhere(
    tmp_path: Path,
) -> None:
    trusted, signed = await keys(tmp_path)
    station = write(tmp_path / "station.json", {"roles": {}})
    pushed = write(tmp_path / "push.json", {"command": {"rec": {"command": SLEEP}}})
    async with start_nodes(tmp_path, ["c1", "c2", "cam1"], conf_args(trusted, station)) as nodes:
        conductor = await settled(nodes, {"/ctl/c1", "/ctl/c2"}, ["/room-a/cam1"])
        leader, standby = (nodes[0], nodes[1]) if conductor == "/ctl/c1" else nodes[1::-1]
        code, out, err = await cli(
            tmp_path, "roles", "push", str(pushed), "--station", "/room-a/cam9", *signed
        )
        assert (code, err) == (0, ""), err  # not an error: kept for when it appears
        line = out.strip()
        assert line.startswith("/room-a/cam9: pending "), out
        assert line.endswith(
            "no live member /room-a/cam9; kept as desired, pushed when it appears (if the path "
            "is mistyped: stagemesh roles forget /room-a/cam9)"
        ), out

        async def desired(node: LiveNode) -> set[str]:
            return set((await node.status())["roles"]["manager"]["stations"])

        async def replicated() -> bool:
            return "/room-a/cam9" in await desired(standby)

        await wait_for(replicated, 10, what="the pending station replicated to the standby")
        code, out, _ = await cli(tmp_path, "roles", "show")
        assert code == 0 and any(
            row.split()[0] == "/room-a/cam9" and "yes" in row.split() for row in out.splitlines()
        ), out

        # Forgetting changes the desired state: an operator must sign it.
        code, _, err = await cli(tmp_path, "roles", "forget", "/room-a/cam9")
        assert code == 1 and err.startswith("error: Unauthorized: "), err
        assert "/room-a/cam9" in await desired(leader)
        code, out, err = await cli(tmp_path, "roles", "forget", "/room-a/cam9", *signed)
        assert (code, err) == (0, ""), err
        assert out.strip() == (
            "/room-a/cam9: forgotten; the conductor no longer pushes to it, and what it runs "
            "is not changed"
        )
        assert "/room-a/cam9" not in await desired(leader)

        async def forgotten_on_the_standby() -> bool:
            return "/room-a/cam9" not in await desired(standby)

        await wait_for(forgotten_on_the_standby, 10, what="the forget replicated")
        code, out, _ = await cli(tmp_path, "roles", "show")
        assert code == 0 and "/room-a/cam9" not in out
        # The standby saved it: a restarted candidate does not bring the station back.
        saved = tmp_path / "state" / "conf" / "ctl" / standby.name / "roles" / "desired.json"

        def saved_forgotten() -> bool:
            doc = json.loads(saved.read_text()) if saved.exists() else {}
            chain = doc.get("desired", {}).get("stations", {}).get("/room-a/cam9", [])
            return len(chain) == 1 and json.loads(chain[0])["mode"] == "forget"

        await wait_for(saved_forgotten, 10, what="the forget saved by the standby")
        # Forgetting a live station leaves what it runs alone.
        code, out, err = await cli(
            tmp_path, "roles", "push", str(pushed), "--station", "/room-a/cam1", *signed
        )
        assert code == 0, err
        code, out, err = await cli(tmp_path, "roles", "forget", "/room-a/cam1", *signed)
        assert code == 0 and "forgotten;" in out, err
        doc = await nodes[2].status()
        assert [(i["uuid"], i["state"]) for i in doc["roles"]["station"]["instances"]] == [
            ("rec", "running")
        ]
        assert "/room-a/cam1" not in await desired(leader)


async def test_show_station_says_why_a_role_cannot_start(tmp_path: Path) -> None:
    trusted, signed = await keys(tmp_path)
    station = write(tmp_path / "station.json", {"roles": {}})
    pushed = write(
        tmp_path / "push.json",
        {"command": {"ghost": {"command": [GHOST, "-i", "x"]}, "rec": {"command": SLEEP}}},
    )
    async with start_nodes(tmp_path, ["c1", "cam1"], conf_args(trusted, station)) as nodes:
        await settled(nodes, {"/ctl/c1"}, ["/room-a/cam1"])
        code, _, err = await cli(
            tmp_path, "roles", "push", str(pushed), "--station", "/room-a/cam1", *signed
        )
        assert code == 0, err

        async def backing_off() -> bool:
            doc = await nodes[1].status()
            states = {i["uuid"]: i["state"] for i in doc["roles"]["station"]["instances"]}
            return states.get("ghost") in ("backoff", "failed")

        await wait_for(backing_off, 15, what="the role that cannot start backing off")
        code, out, err = await cli(tmp_path, "roles", "show", "--station", "/room-a/cam1")
        assert code == 0, err
        rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("command/")}
        reason = f"cannot start '{GHOST}': No such file or directory (not found on PATH)"
        assert rows["command/ghost"].endswith(reason), out
        assert rows["command/ghost"].split()[1] in ("backoff", "failed")
        assert rows["command/rec"].split()[1] == "running" and rows["command/rec"].endswith(" -")
        header = next(line for line in out.splitlines() if line.startswith("INSTANCE"))
        assert header.split()[-2:] == ["LAST", "ERROR"]
