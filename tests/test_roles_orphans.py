"""No role process outlives its station, and a station never runs two copies of an instance.

Real ``stagemesh node --roles`` processes and real stand-in role processes (a Python sleeper
with a child of its own, noting its starts and stops in a file): ``kill -9`` of the station
takes its roles (and their children) along; a station whose guardian died with it finds the
leftovers it recorded and stops them before it starts anything; a recycled pid is left alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from roles import (
    BackoffPolicy,
    RoleConfig,
    StationIdentity,
    SupervisorEvent,
    SupervisorInUse,
    _guardian as roles_guardian,
    open_station,
    process_group_alive,
)
from roles._guardian import boot_id, proc_stat
from roles._leftovers import RECORD_FILE_NAME
from tests.harness import wait_for
from tests.livenodes import LiveNode, start_nodes

PY = sys.executable
IDENTITY = StationIdentity(hostname="test-host", mac="02:00:00:00:00:01", addresses=("127.0.0.1",))
FAST = BackoffPolicy(base=0.05, max_delay=1.0, failed_retry=0.5)
#: A role stand-in: notes "start PID" / "stop PID" in the file argv[1], starts a child of its
#: own (same process group) and prints its pid, then sleeps until SIGTERM.
STANDIN = """
import os, signal, subprocess, sys, time
def note(word):
    with open(sys.argv[1], "a") as f:
        f.write(f"{word} {os.getpid()}\\n")
signal.signal(signal.SIGTERM, lambda *_: (note("stop"), sys.exit(0)))
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
note("start")
print("child", child.pid, flush=True)
time.sleep(300)
"""


def alive(pid: int) -> bool:
    """Whether *pid* is a live process (a zombie is not)."""
    stat = proc_stat(pid)
    return stat is not None and stat.state not in ("Z", "X")


def children_named(parent: int, needle: str) -> list[int]:
    """Live processes whose parent is *parent* and whose command line contains *needle*."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and needle in cmdline and alive(int(name)):
            found.append(int(name))
    return found


def copies(marker: str) -> list[int]:
    """Live processes with *marker* in their command line (the stand-ins of one test)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if marker.encode() in args and alive(int(name)):
            found.append(int(name))
    return found


def station_file(tmp: Path, log: Path) -> Path:
    path = tmp / "station.json"
    role = {"command": [PY, "-c", STANDIN, str(log)], "stop_grace": 2}
    path.write_text(json.dumps({"roles": {"command": {"cam": role}}}))
    return path


async def role_of(node: LiveNode) -> tuple[int, int] | None:
    """(pid, child pid) of the node's running stand-in, once it printed its child."""
    doc = await node.status()
    for instance in doc["roles"]["station"]["instances"]:
        children = [line for line in instance["tail"] if line.startswith("child ")]
        if instance["state"] == "running" and children:
            return int(instance["pid"]), int(children[-1].split()[1])
    return None


async def running_role(node: LiveNode) -> tuple[int, int]:
    found: list[tuple[int, int]] = []

    async def check() -> bool:
        role = await role_of(node)
        if role is not None:
            found.append(role)
        return role is not None

    await wait_for(check, 20, what=f"the role of {node.name} running")
    return found[-1]


@pytest.mark.slow
async def test_role_processes_and_their_children_die_with_a_killed_station(
    tmp_path: Path,
) -> None:
    log = tmp_path / "runs.log"
    args = ["--no-mdns", "--roles", str(station_file(tmp_path, log))]
    async with start_nodes(tmp_path, ["st"], args) as (node,):
        pid, child = await running_role(node)
        assert os.getpgid(child) == pid  # the role's own child, in the role's group

        # The guardian can be killed too: the station starts another and tells it everything.
        [guardian] = children_named(node.process.pid, "_guardian.py")
        os.kill(guardian, signal.SIGKILL)
        await wait_for(
            lambda: [g for g in children_named(node.process.pid, "_guardian.py") if g != guardian],
            10,
            what="a new guardian",
        )

        node.kill()  # kill -9 of the station
        took = await wait_for(
            lambda: not alive(pid) and not alive(child) and not process_group_alive(pid),
            10,
            every=0.01,
            what="the role and its child gone after kill -9 of the station",
        )
        print(f"role processes gone {took:.3f} s after kill -9 of the station")
        assert took < 5.0
    assert log.read_text().split() == ["start", str(pid), "stop", str(pid)]  # SIGTERM first


@pytest.mark.slow
async def test_a_restarted_station_stops_recorded_leftovers_before_starting_its_one_copy(
    tmp_path: Path,
) -> None:
    """The station and its guardian both die (no one stops the role): the next start of the
    station stops the leftover, then starts the one copy."""
    log = tmp_path / "runs.log"
    args = ["--no-mdns", "--roles", str(station_file(tmp_path, log))]
    async with start_nodes(tmp_path, ["st"], args) as (node,):
        old, old_child = await running_role(node)
        [guardian] = children_named(node.process.pid, "_guardian.py")
        node.process.send_signal(signal.SIGSTOP)  # so it cannot start another guardian
        os.kill(guardian, signal.SIGKILL)
        node.kill()
        await node.process.wait()
        await wait_for(lambda: not alive(guardian), 5, what="the guardian gone")
    assert alive(old) and alive(old_child)  # orphans now: nobody stopped them
    assert copies(str(log)) == [old]

    async with start_nodes(tmp_path, ["st"], args) as (again,):
        new, _ = await running_role(again)
        assert new != old
        assert not alive(old) and not alive(old_child) and not process_group_alive(old)
        assert copies(str(log)) == [new]  # one copy
        # The leftover was stopped (SIGTERM: it noted "stop") before the new copy started.
        assert log.read_text().split() == ["start", str(old), "stop", str(old), "start", str(new)]
    assert "left running by an earlier run" in "\n".join(again.output)


# --- the record, in process -------------------------------------------------------------------


def write_record(state_dir: Path, processes: list[dict[str, Any]]) -> None:
    """Write ``processes.json`` as a station that died would have left it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    doc = {"format": 1, "boot_id": boot_id(), "station_pid": 1, "processes": processes}
    (state_dir / RECORD_FILE_NAME).write_text(json.dumps(doc))


def entry(pid: int, start_time: int) -> dict[str, Any]:
    return {
        "role": "command",
        "uuid": "cam",
        "pid": pid,
        "start_time": start_time,
        "grace": 1.0,
        "argv": ["sleep", "300"],
    }


def start_time(process: subprocess.Popen[bytes]) -> int:
    stat = proc_stat(process.pid)
    assert stat is not None
    return stat.start_time


CONFIG = RoleConfig.from_dict({"command": {"cam": {"timestamp": 1, "command": ["sleep", "300"]}}})


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A sleeping process in its own session, killed at the end of the test."""
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


async def test_a_recorded_leftover_is_stopped_before_the_new_copy_starts(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    # A role process left by an earlier run (started with no guardian: nobody stopped it).
    leftover = bystander
    write_record(tmp_path, [entry(leftover.pid, start_time(leftover))])
    seen: list[tuple[str, bool]] = []

    def on_event(event: SupervisorEvent) -> None:
        seen.append((event.state, alive(leftover.pid)))

    with trio.fail_after(20):
        async with open_station(
            tmp_path, initial=CONFIG, identity=IDENTITY, backoff=FAST, on_event=on_event
        ) as station:
            status = await station.supervisor.wait_for(
                "command", "cam", lambda s: s is not None and s.state == "running"
            )
            assert status is not None and status.pid != leftover.pid
            assert seen[0] == ("starting", False)  # gone before anything started
            assert leftover.poll() == -signal.SIGTERM
            record = json.loads((tmp_path / RECORD_FILE_NAME).read_text())
            assert [p["pid"] for p in record["processes"]] == [status.pid]
    record = json.loads((tmp_path / RECORD_FILE_NAME).read_text())
    assert record["processes"] == []  # a clean stop leaves nothing recorded


async def test_a_recycled_pid_is_not_killed(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    # A live, unrelated process holds the recorded pid, but it started at another time.
    unrelated = bystander
    write_record(tmp_path, [entry(unrelated.pid, start_time(unrelated) - 1)])
    with trio.fail_after(20):
        async with open_station(
            tmp_path, initial=CONFIG, identity=IDENTITY, backoff=FAST
        ) as station:
            await station.supervisor.wait_for(
                "command", "cam", lambda s: s is not None and s.state == "running"
            )
            assert unrelated.poll() is None and alive(unrelated.pid)
    assert unrelated.poll() is None  # not even at the station's stop


async def test_records_of_another_boot_or_malformed_are_ignored(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    unrelated = bystander
    doc = {
        "format": 1,
        "boot_id": "another-boot",
        "processes": [entry(unrelated.pid, start_time(unrelated))],
    }
    (tmp_path / RECORD_FILE_NAME).write_text(json.dumps(doc))
    with trio.fail_after(20):
        async with open_station(tmp_path, identity=IDENTITY):
            assert unrelated.poll() is None
        (tmp_path / RECORD_FILE_NAME).write_text("{not json")
        async with open_station(tmp_path, initial=CONFIG, identity=IDENTITY) as station:
            assert station.supervisor.spec("command", "cam") is not None
        write_record(tmp_path, [{"pid": "x"}, entry(unrelated.pid, -5)])
        async with open_station(tmp_path, identity=IDENTITY):
            pass
    assert unrelated.poll() is None


async def test_two_stations_never_share_a_state_directory(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_station(tmp_path, initial=CONFIG, identity=IDENTITY) as station:
            with pytest.raises(SupervisorInUse, match="in use by another station"):
                async with open_station(tmp_path, initial=CONFIG, identity=IDENTITY):
                    pass
            status = station.supervisor.status("command", "cam")
            assert status is not None and status.state in ("starting", "running")
        async with open_station(tmp_path, identity=IDENTITY):
            pass  # free again once the first one closed


def test_a_guardian_started_again_knows_what_to_watch_from_its_start(
    bystander: subprocess.Popen[bytes],
) -> None:
    # A guardian started again (the last one died) gets the groups already watched on its
    # command line, not in a first line written after it started: a station killed in
    # between (here: stdin closed at once, before any line) left its roles running.
    spec = f"{bystander.pid}:{start_time(bystander)}:1.0"
    guardian = subprocess.run(
        [sys.executable, "-I", "-S", str(Path(roles_guardian.__file__)), str(os.getpid()), spec],
        input=b"",
        capture_output=True,
        timeout=30,
    )
    assert guardian.returncode == 0, guardian.stderr
    assert bystander.wait(timeout=10) == -signal.SIGTERM
    assert b"stopped its role process group(s)" in guardian.stderr
    # A malformed argument is reported and ignored, as a malformed line is.
    other = subprocess.run(
        [sys.executable, "-I", "-S", str(Path(roles_guardian.__file__)), "1", "x:y"],
        input=b"",
        capture_output=True,
        timeout=30,
    )
    assert other.returncode == 0 and b"malformed argument" in other.stderr
