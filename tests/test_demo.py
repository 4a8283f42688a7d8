"""``stagemesh demo``: its plan (who runs where, with which flags), and its one-line usage
errors for a port that is taken or a size out of range. (The running demo, its dashboard and
its clean stop: ``tests/test_dashboard_browser.py``.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh._demo import (
    DEFAULT_BEACON_PORT,
    DemoOptions,
    node_argv,
    plan_demo,
    station_file,
)
from roles import default_factories, load_station_file, validate_update
from tests.demos import processes_mentioning, start_demo
from tests.netns import Lan


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh", "demo", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_one_site_shares_one_private_beacon_port_and_two_orchestras() -> None:
    members = plan_demo(DemoOptions(nodes=6))
    assert [m.path for m in members] == [
        "/cmu/ada", "/colorado/bela", "/cmu/clara", "/colorado/dmitri", "/cmu/erik",
        "/colorado/fanny",
    ]  # fmt: skip
    assert {m.beacon_port for m in members} == {DEFAULT_BEACON_PORT}
    assert DEFAULT_BEACON_PORT != 7470  # never the real nodes' beacons
    flagged = [m.path for m in members if m.supernode and m.conductor]
    assert flagged == ["/cmu/ada", "/colorado/bela"]


def test_two_sites_meet_only_through_the_registry(tmp_path: Path) -> None:
    options = DemoOptions(nodes=4, sites=2)
    members = plan_demo(options)
    ports = {m.orchestra: m.beacon_port for m in members}
    assert ports == {"cmu": DEFAULT_BEACON_PORT, "colorado": DEFAULT_BEACON_PORT + 1}
    for member in members:
        argv = node_argv(member, options, tmp_path, "http://127.0.0.1:7480")
        flags = " ".join(argv)
        assert "--bind 127.0.0.1" in flags and "--no-mdns" in flags
        assert f"--broadcast-port {ports[member.orchestra]}" in flags
        assert "--registry http://127.0.0.1:7480" in flags
        assert "--seed" not in flags  # nothing but the registry joins the two sites


def test_conference_stations_write_only_in_their_data_folder(tmp_path: Path) -> None:
    options = DemoOptions(nodes=4, conference=True)
    members = plan_demo(options)
    assert {m.orchestra for m in members} == {"room-a", "room-b"}
    assert all(m.station for m in members)
    data = tmp_path / "data"
    for member in members:
        path = tmp_path / f"{member.name}.json"
        path.write_text(json.dumps(station_file(member)))
        loaded = load_station_file(path)
        assert loaded.blocked_roles == frozenset({"stream"})
        specs = validate_update(
            loaded.roles,
            default_factories(),
            blocked_roles=loaded.blocked_roles,
            variables={"hostname": "demo", **loaded.variables},
            roots=[str(data)],
        )
        assert {role for role, _ in specs} == {"record", "encode", "upload"}
        for spec in specs.values():
            assert spec.argv[0] == "sh"  # a stand-in, no camera, ffmpeg or rsync
            paths = [a for a in spec.argv if a.startswith("/")]
            assert paths and all(a.startswith(str(data)) for a in paths), spec.argv
        # the stations trust the demo's operator key; every node has its federation key
        argv = " ".join(node_argv(member, options, tmp_path, "http://127.0.0.1:7480"))
        assert f"--operator-keys {tmp_path / 'operator.key.pub'}" in argv
        assert f"--key-file {tmp_path / 'federation.key'}" in argv


@pytest.mark.parametrize("nodes", ["1", "33", "-4"])
def test_a_size_out_of_range_is_a_one_line_usage_error(nodes: str) -> None:
    done = _demo("--nodes", nodes)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: --nodes {nodes} is out of range: a demo runs 2 to 32 nodes on this machine"
    ]
    assert done.stdout == ""  # nothing was started


def test_a_taken_port_is_a_one_line_usage_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag, what in (("--registry-port", "registry"), ("--dashboard-port", "dashboard")):
            done = _demo("--registry-port", "0", "--dashboard-port", "0", flag, str(port))
            assert done.returncode == 2, done
            assert done.stderr.splitlines() == [
                f"error: port 127.0.0.1:{port} ({what}) is taken: Address already in use; "
                f"pick another with {flag} PORT (0 picks a free one)"
            ]
            assert done.stdout == ""


def test_a_taken_beacon_port_is_a_one_line_usage_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = _demo("--beacon-port", str(port), "--registry-port", "0", "--dashboard-port", "0")
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [
        f"error: beacon port {port} (UDP) is taken: Address already in use (another demo or "
        "other nodes use it); pick another with --beacon-port PORT"
    ]


@pytest.mark.netns
@pytest.mark.slow
def test_a_demo_killed_with_sigkill_takes_its_processes_with_it(tmp_path: Path) -> None:
    """Even ``kill -9`` of the demo (no chance to clean up) leaves no node behind."""
    with Lan(1) as lan:
        demo, folder, _ = start_demo(lan, tmp_path, "--nodes", "2")
        assert len(processes_mentioning(folder)) == 3  # the registry and two nodes
        demo.kill()
        deadline = time.monotonic() + 15
        while processes_mentioning(folder) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_mentioning(folder) == []
