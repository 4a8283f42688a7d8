"""Issue #18, findings 4 and 15: values a configuration may hold are checked where they enter,
by the one validator ``roles.check`` and every apply share, so a node never dies of a pushed
value and never does what its operator did not allow.

A real station node on loopback, changed by its own operator through the local API (the same
validator runs for orders relayed by the conductor). NUL bytes in a command, its folder or its
output folder; ``..`` in an output folder; ``LD_PRELOAD`` in the environment: each is refused
with a clear error by ``roles.check`` and ``roles.apply`` alike, and the node keeps running. A
saved configuration that can no longer be applied (written before the validator existed) is
set aside at start: the node starts, runs no roles, and says why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import wait_for
from tests.livenodes import LiveNode, start_nodes
from tests.security.roles_hosts import secret_of, station_args

pytestmark = pytest.mark.slow

STATION = "/room/station"


async def ask(client: httpx.AsyncClient, node: LiveNode, kind: str, config: Any) -> Any:
    """Send *kind* with *config* to the station as its operator; return the JSON answer."""
    response = await client.post(
        node.status_url + "/api/request",
        json={"path": STATION, "kind": kind, "payload": {"config": config}},
        headers={"Authorization": f"Bearer {secret}"} if (secret := secret_of(node)) else {},
    )
    return response.json()


def cmd(**options: Any) -> dict[str, Any]:
    return {"command": {"x": {"command": ["sleep", "60"], **options}}}


def record(output_dir: str) -> dict[str, Any]:
    return {
        "record": {
            "cam": {"device": "/dev/null", "output_dir": output_dir, "command": ["sleep", "60"]}
        }
    }


async def test_hostile_values_are_refused_by_check_and_apply_alike(tmp_path: Path) -> None:
    escape = tmp_path / "escaped"
    hostile = {
        "NUL in argv": {"command": {"x": {"command": ["sh", "-c", "echo a\x00b"]}}},
        "NUL in cwd": cmd(cwd="/tmp\x00x"),
        "NUL in output_dir": record("rec\x00x"),
        ".. in output_dir": record(f"../../../../../../..{escape}"),
        "absolute output_dir elsewhere": record(str(escape)),
        "LD_PRELOAD": cmd(env={"LD_PRELOAD": "/tmp/evil.so"}),
        "newline in env": cmd(env={"TZ": "UTC\nX=1"}),
    }
    async with (
        start_nodes(tmp_path, ["station"], station_args(tmp_path), orchestra="room") as (node,),
        httpx.AsyncClient(timeout=30) as client,
    ):
        errors = {}
        for name, config in hostile.items():
            checked = await ask(client, node, "roles.check", config)
            applied = await ask(client, node, "roles.apply", config)
            for answer in (checked, applied):
                assert answer["ok"] is False, (name, answer)
                assert answer["error_type"] == "InvalidOptions", (name, answer)
                assert answer["error_family"] == "InvalidConfiguration", (name, answer)
            assert checked["error"] == applied["error"]  # one validator
            assert node.process.returncode is None, name
            errors[name] = applied["error"]
        assert "'\\x00'" in errors["NUL in argv"]
        assert "outside the folders" in errors[".. in output_dir"]
        assert "LD_PRELOAD" in errors["LD_PRELOAD"] and "env_allow" in errors["LD_PRELOAD"]
        doc = (await node.status())["roles"]["station"]
        assert doc["instances"] == [] and not escape.exists()
        # What the validator accepts is applied: a folder inside the station's data folder.
        fine = await ask(client, node, "roles.apply", record("recordings/room"))
        assert fine["ok"] is True, fine
        data_dir = Path(doc["data_dir"])
        await wait_for((data_dir / "recordings" / "room").is_dir, 10, "the output folder made")


async def test_a_saved_configuration_that_cannot_apply_is_set_aside(tmp_path: Path) -> None:
    """A configuration saved before validation matched application (format 1, a NUL in its
    command): the node starts instead of dying at every start, runs no roles, says why."""
    state = tmp_path / "state" / "default" / "room" / "station" / "roles" / "roles.json"
    state.parent.mkdir(parents=True)
    saved = {"command": {"x": {"timestamp": 1, "command": ["sh", "-c", "echo a\x00b"]}}}
    state.write_text(json.dumps({"format": 1, "config": saved, "held": []}))
    async with start_nodes(tmp_path, ["station"], station_args(tmp_path), orchestra="room") as (
        node,
    ):
        doc = (await node.status())["roles"]["station"]
        assert doc["instances"] == []
        assert "cannot be applied" in doc["load_error"] and "set aside" in doc["load_error"]
        assert "control character" in doc["load_error"]
        assert any(".refused-" in p.name for p in state.parent.iterdir())
        await wait_for(
            lambda: any("cannot be applied" in line for line in node.output),
            5,
            "the reason in the node's log",
        )
