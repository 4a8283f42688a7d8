"""Issue #18, findings 1-3: another host on the venue's Wi-Fi tries to make a station run a
command, and is refused.

Every machine is a real ``stagemesh node`` in its own network namespace. The guest
(``roles_guest.py``) uses only the mesh library's public API, so each attack is the same one
that worked before operator keys: a ``roles.apply`` or ``roles.push`` carrying a plain
configuration (and the unsigned order the new protocol expects), and a ``roles.desired`` that
injects a desired state into the conductor. What the guest asks the station to run would
write a marker file; the marker never appears, and the station runs only what an operator
signed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.netns import Lan
from tests.security.roles_hosts import (
    FEDERATION,
    Machine,
    conducting,
    guest,
    stagemesh,
    start,
    status,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]

STATION = "/room/station"


def evil(marker: Path) -> dict[str, Any]:
    """A configuration that would prove the guest ran a command on the station."""
    return {"command": {"pwn": {"timestamp": 1, "command": ["sh", "-c", f"echo pwned > {marker}"]}}}


def unsigned_order(config: dict[str, Any], station: str = STATION, issued: int = 1) -> str:
    """What a config order looks like on the wire, with no signature (written by hand: the
    guest has no operator key, and needs nothing from the roles package)."""
    return json.dumps(
        {
            "v": 1,
            "kind": "config",
            "federation": FEDERATION,
            "station": station,
            "issued": issued,
            "key": None,
            "mode": "replace",
            "config": config,
            "sig": None,
        }
    )


def attacks(marker: Path) -> list[dict[str, Any]]:
    """roles.apply straight to the station, and roles.push through the conductor, in both the
    old payload form and the new one (an unsigned order)."""
    config = evil(marker)
    order = unsigned_order(config)
    return [
        {
            "path": STATION,
            "kind": "roles.apply",
            "payload": {"config": config, "orders": [order], "term": "<TERM>"},
        },
        {
            "path": "<CONDUCTOR>",
            "kind": "roles.push",
            "payload": {"station": STATION, "config": config, "order": order},
        },
    ]


def keys(lan: Lan, machine_host: Any, tmp: Path) -> tuple[Path, Path]:
    """A federation key and an operator key pair, made with ``stagemesh keygen``."""
    federation_key = tmp / "federation.key"
    operator_key = tmp / "operator.key"
    lan.run(machine_host, sys.executable, "-m", "mesh", "keygen", str(federation_key))
    lan.run(
        machine_host, sys.executable, "-m", "mesh", "keygen", "--operator", str(operator_key),
        check=False,
    )  # fmt: skip
    return federation_key, operator_key


def operators(operator_key: Path) -> dict[str, str]:
    """The node setting that trusts the operator key (``--operator-keys`` as environment)."""
    return {"STAGEMESH_OPERATOR_KEYS": f"{operator_key}.pub"}


def station_file(tmp: Path) -> Path:
    path = tmp / "station.json"
    path.write_text(json.dumps({"roles": {}}))
    return path


def instances(lan: Lan, station: Machine) -> list[str]:
    doc = status(lan, station)["roles"]["station"]
    return sorted(f"{i['role']}/{i['uuid']}" for i in doc["instances"])


def as_conductor(
    lan: Lan, tmp: Path, station: Machine, federation_key: Path, requests: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The guest, a member started as a conductor candidate, wins the post and sends
    *requests* (again while the station does not see it as the conductor yet)."""
    return guest(
        lan,
        lan.hosts[1],
        tmp,
        seed=station,
        target=STATION,
        requests=requests,
        key_file=federation_key,
        conduct=True,
        retry_on=("NotConductor",),
    )


def keyed_station(lan: Lan, tmp: Path) -> tuple[Path, Path, dict[str, str], Machine]:
    """A federation key, an operator key pair, the environment that trusts both, and a
    station started with it on host 0."""
    federation_key, operator_key = keys(lan, lan.hosts[0], tmp)
    trusted = {"STAGEMESH_KEY_FILE": str(federation_key), **operators(operator_key)}
    station = start(lan, lan.hosts[0], tmp, STATION, "--roles", str(station_file(tmp)), env=trusted)
    return federation_key, operator_key, trusted, station


def with_conductor(requests: list[dict[str, Any]], conductor: str) -> list[dict[str, Any]]:
    return [{**r, "path": conductor if r["path"] == "<CONDUCTOR>" else r["path"]} for r in requests]


def test_open_federation_a_stranger_cannot_run_a_command(lan: Lan, tmp_path: Path) -> None:
    """Finding 1: no federation key; a host that is not even a member sends one unsigned
    roles.apply to the station and one roles.push to the conductor."""
    marker = tmp_path / "pwned"
    station = start(lan, lan.hosts[0], tmp_path, STATION, "--roles", str(station_file(tmp_path)))
    conductor = start(
        lan, lan.hosts[2], tmp_path, "/desk/conductor", "--conductor", "--seed", station.gossip
    )
    answers = guest(
        lan,
        lan.hosts[1],
        tmp_path,
        seed=station,
        target=conductor.path,
        requests=with_conductor(attacks(marker), conductor.path),
    )
    assert [a["ok"] for a in answers] == [False, False], answers
    assert answers[0]["error_type"] == "Unauthorized" and "open" in answers[0]["error"]
    assert answers[1]["error_type"] in ("Unauthorized", "NotConductor"), answers
    assert instances(lan, station) == [] and not marker.exists()
    # The station says so: in its status, and at start in its log.
    doc = status(lan, station)
    assert doc["security"] == "open"
    assert doc["roles"]["remote_changes"]["mode"] == "refused"
    assert doc["roles"]["refused_changes"]["refused"] >= 1
    assert "remote role changes are refused" in station.proc.stderr()


def test_keyed_federation_a_member_cannot_run_a_command(lan: Lan, tmp_path: Path) -> None:
    """Finding 2: the guest holds the federation key (a member), not an operator key. It
    sends roles.apply to the station, roles.push to the conductor, and a desired state to the
    conductor (roles.desired and roles.desired.sync) for the conductor to push itself."""
    marker = tmp_path / "pwned"
    federation_key, operator_key, trusted, station = keyed_station(lan, tmp_path)
    conductor = start(
        lan, lan.hosts[2], tmp_path, "/desk/conductor", "--conductor", "--seed", station.gossip,
        env=trusted,
    )  # fmt: skip
    conducting(lan, conductor)
    config = evil(marker)
    order = unsigned_order(config, issued=2**40)
    requests = [
        *with_conductor(attacks(marker), conductor.path),
        {
            "path": conductor.path,
            "kind": "roles.desired",
            "payload": {"state": {"stations": {STATION: config}}},
        },
        {
            "path": conductor.path,
            "kind": "roles.desired.sync",
            "payload": {"state": {"stations": {STATION: [order]}}},
        },
    ]
    answers = guest(
        lan,
        lan.hosts[1],
        tmp_path,
        seed=station,
        target=conductor.path,
        requests=requests,
        key_file=federation_key,
    )
    apply, push, desired, sync = answers
    assert not apply["ok"] and apply["error_type"] == "NotConductor", apply
    assert not push["ok"] and push["error_type"] == "Unauthorized", push
    assert not desired["ok"], desired  # a plain configuration is not an order
    # The unsigned order was dropped, and counted, not merged.
    manager = status(lan, conductor)["roles"]
    assert manager["refused_changes"].get("desired-unsigned", 0) >= 1
    assert STATION not in manager["manager"]["stations"], sync
    assert instances(lan, station) == [] and not marker.exists()

    # The operator's signed push, from the conductor's machine, is what the station runs.
    pushed = tmp_path / "push.json"
    pushed.write_text(json.dumps({"command": {"ok": {"command": ["sleep", "60"]}}}))
    code, _, err = stagemesh(
        lan, conductor, "roles", "push", str(pushed), "--station", STATION,
        "--node", conductor.url, "--operator-key", str(operator_key),
    )  # fmt: skip
    assert code == 0, err
    assert instances(lan, station) == ["command/ok"] and not marker.exists()


def test_a_member_that_wins_the_conductor_post_cannot_run_a_command(
    lan: Lan, tmp_path: Path
) -> None:
    """Finding 3 (first half): the guest holds the federation key, starts as a conductor
    candidate and wins the post (no other candidate); as the conductor, at the right term, it
    sends the station unsigned orders and orders with a forged signature."""
    marker = tmp_path / "pwned"
    federation_key, _, _, station = keyed_station(lan, tmp_path)
    config = evil(marker)
    forged = json.loads(unsigned_order(config, issued=2**40))
    forged.update(key="0123456789abcdef", sig="A" * 88)
    requests = [
        {
            "path": STATION,
            "kind": "roles.apply",
            "payload": {"config": config, "orders": [unsigned_order(config)], "term": "<TERM>"},
        },
        {
            "path": STATION,
            "kind": "roles.apply",
            "payload": {"config": config, "orders": [json.dumps(forged)], "term": "<TERM>"},
        },
    ]
    answers = as_conductor(lan, tmp_path, station, federation_key, requests)
    assert [a["ok"] for a in answers] == [False, False], answers
    assert {a["error_type"] for a in answers} == {"Unauthorized"}, answers
    assert "no operator signature" in answers[0]["error"]
    assert "0123456789abcdef" in answers[1]["error"]
    assert instances(lan, station) == [] and not marker.exists()
    assert status(lan, station)["roles"]["refused_changes"]["signature"] == 2


def test_a_captured_signed_order_cannot_be_replayed(lan: Lan, tmp_path: Path) -> None:
    """Finding 3 (second half), and replay: the guest captured operator-signed orders (an
    older one for this station, one for another station) and replays them once it conducts,
    also with the configuration altered. The station keeps running the newest signed one."""
    federation_key, operator_key, trusted, station = keyed_station(lan, tmp_path)
    conductor = start(
        lan, lan.hosts[2], tmp_path, "/desk/conductor", "--conductor", "--seed", station.gossip,
        env=trusted,
    )  # fmt: skip
    conducting(lan, conductor)
    desired = tmp_path / "host2-conductor" / "state" / FEDERATION / "desk" / "conductor"
    desired = desired / "roles" / "desired.json"

    def push(name: str, station_path: str) -> str:
        pushed = tmp_path / f"{name}.json"
        pushed.write_text(json.dumps({"command": {name: {"command": ["sleep", "60"]}}}))
        code, _, err = stagemesh(
            lan, conductor, "roles", "push", str(pushed), "--station", station_path,
            "--node", conductor.url, "--operator-key", str(operator_key),
        )  # fmt: skip
        assert code == 0, err
        saved = json.loads(desired.read_text())["desired"]["stations"][station_path]
        text: str = saved[-1]
        return text

    older = push("older", STATION)
    other = push("other", "/room/other")  # not live: kept for later, signed all the same
    push("newer", STATION)
    assert instances(lan, station) == ["command/newer"]

    conductor.proc.kill()
    altered = json.loads(older)
    altered["config"] = evil(tmp_path / "pwned")
    requests = [
        {"path": STATION, "kind": "roles.apply", "payload": {"orders": [o], "term": "<TERM>"}}
        for o in (older, other, json.dumps(altered))
    ]
    answers = as_conductor(lan, tmp_path, station, federation_key, requests)
    stale, elsewhere, tampered = answers
    assert stale["error_type"] == "StaleOrder" and "not newer" in stale["error"], stale
    assert elsewhere["error_type"] == "Unauthorized" and "/room/other" in elsewhere["error"]
    assert tampered["error_type"] == "Unauthorized" and "does not match" in tampered["error"]
    assert instances(lan, station) == ["command/newer"]
    assert not (tmp_path / "pwned").exists()
