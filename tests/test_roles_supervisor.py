"""The process supervisor with real processes: back-off, stop/restart, output, no orphans."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import trio

from roles import (
    BackoffPolicy,
    ProcessSpec,
    ProcessStatus,
    RoleConfig,
    StationIdentity,
    SupervisorEvent,
    open_station,
    open_supervisor,
    process_group_alive,
)

FAST = BackoffPolicy(
    base=0.05,
    factor=2.0,
    max_delay=10.0,
    failure_threshold=5,
    failure_window=60.0,
    failed_retry=0.3,
    reset_after=10.0,
)
PY = sys.executable
IDENTITY = StationIdentity(hostname="test-host", mac="02:00:00:00:00:01", addresses=("127.0.0.1",))


def sh(script: str, **kwargs: object) -> ProcessSpec:
    return ProcessSpec(argv=["sh", "-c", script], **kwargs)  # type: ignore[arg-type]


def state_is(*states: str):  # type: ignore[no-untyped-def]
    def check(status: ProcessStatus | None) -> bool:
        return status is not None and status.state in states

    return check


def pid_alive(pid: int) -> bool:
    """True if *pid* exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


async def test_crashing_command_is_restarted_with_growing_delays_and_reported() -> None:
    events: list[SupervisorEvent] = []
    with trio.fail_after(15):
        async with open_supervisor(backoff=FAST, on_event=events.append) as sup:
            sup.set("crash", "a", sh("echo hi; echo oops >&2; exit 3"))
            status = await sup.wait_for("crash", "a", state_is("failed"))
    assert status is not None
    delays = [e.delay for e in events if e.state == "backoff"]
    assert delays == [0.05, 0.1, 0.2, 0.4]
    assert all(e.exit_status == 3 for e in events if e.state in ("backoff", "failed"))
    failed = [e for e in events if e.state == "failed"]
    assert failed[0].delay == FAST.failed_retry
    assert status.run_count == 5
    assert status.last_exit == 3
    assert status.failures == 5
    assert status.to_dict()["last_exit_text"] == "exit 3"
    assert "hi" in status.tail and "oops" in status.tail


async def test_failed_role_is_retried_slowly() -> None:
    with trio.fail_after(15):
        async with open_supervisor(backoff=FAST) as sup:
            sup.set("crash", "a", sh("exit 1"))
            failed = await sup.wait_for("crash", "a", state_is("failed"))
            assert failed is not None
            began = trio.current_time()
            again = await sup.wait_for(
                "crash", "a", lambda s: s is not None and s.run_count > failed.run_count
            )
            assert again is not None
            assert trio.current_time() - began >= FAST.failed_retry * 0.9
            after = await sup.wait_for("crash", "a", state_is("failed", "backoff"))
            assert after is not None and after.state == "failed"  # still within the window


async def test_stop_start_and_restart_work() -> None:
    with trio.fail_after(15):
        async with open_supervisor(backoff=FAST) as sup:
            sup.set("long", "a", sh("echo started; exec sleep 60"))
            running = await sup.wait_for("long", "a", state_is("running"))
            assert running is not None and running.pid is not None
            first_pid = running.pid
            assert pid_alive(first_pid)

            sup.stop("long", "a")
            stopped = await sup.wait_for("long", "a", state_is("stopped"))
            assert stopped is not None and stopped.pid is None
            assert stopped.last_exit == -15  # SIGTERM
            assert not process_group_alive(first_pid)

            sup.start("long", "a")
            again = await sup.wait_for("long", "a", state_is("running"))
            assert again is not None and again.pid not in (None, first_pid)
            assert again.run_count == 2
            second_pid = again.pid
            assert second_pid is not None

            sup.restart("long", "a")
            restarted = await sup.wait_for(
                "long", "a", lambda s: s is not None and s.state == "running" and s.run_count == 3
            )
            assert restarted is not None and restarted.pid not in (None, second_pid)
            assert restarted.failures == 0  # a restart asked for is not a failure
            assert not process_group_alive(second_pid)


async def test_stop_escalates_to_sigkill_after_the_grace_period() -> None:
    with trio.fail_after(15):
        async with open_supervisor(backoff=FAST) as sup:
            sup.set(
                "stubborn",
                "a",
                sh("trap '' TERM; echo ready; while :; do sleep 0.05; done", stop_grace=0.3),
            )
            await sup.wait_for("stubborn", "a", lambda s: s is not None and "ready" in s.tail)
            began = trio.current_time()
            sup.stop("stubborn", "a")
            stopped = await sup.wait_for("stubborn", "a", state_is("stopped"))
            assert stopped is not None
            assert stopped.last_exit == -9
            assert trio.current_time() - began >= 0.3


async def test_output_tail_is_captured() -> None:
    script = (
        "import sys\n"
        "for i in range(300): print(f'line {i}')\n"
        "print('to stderr', file=sys.stderr)\n"
        "sys.stdout.write('no newline at the end')\n"
    )
    with trio.fail_after(15):
        async with open_supervisor(backoff=FAST, tail_lines=50) as sup:
            sup.set("talk", "a", ProcessSpec(argv=[PY, "-c", script], restart="on-failure"))
            done = await sup.wait_for("talk", "a", state_is("exited"))
            assert done is not None and done.last_exit == 0
            tail = sup.tail("talk", "a", 50)
    assert len(tail) == 50
    assert tail[-1].startswith("[stagemesh] run 1 ended: exit 0")
    assert tail[-2] == "no newline at the end"
    assert tail[-3] == "to stderr"
    assert tail[-4] == "line 299"
    assert "line 0" not in tail


async def test_no_orphan_after_the_supervisor_stops() -> None:
    # The command leaves a grandchild that ignores SIGTERM, in its own process group.
    script = "trap '' TERM; sleep 60 & echo child $!; wait"
    with trio.fail_after(15):
        async with open_supervisor(backoff=FAST) as sup:
            sup.set("tree", "a", sh(script, stop_grace=0.3))
            status = await sup.wait_for(
                "tree", "a", lambda s: s is not None and any(x.startswith("child ") for x in s.tail)
            )
            assert status is not None and status.pid is not None
            leader = status.pid
            child = int(next(x for x in status.tail if x.startswith("child ")).split()[1])
            assert pid_alive(child)
            assert os.getpgid(child) == leader
    assert not pid_alive(leader)
    assert not pid_alive(child)
    assert not process_group_alive(leader)


async def test_no_orphan_when_the_supervisor_is_cancelled() -> None:
    pids: list[int] = []
    with trio.fail_after(15):
        with trio.CancelScope() as scope:
            async with open_supervisor(backoff=FAST) as sup:
                sup.set("tree", "a", sh("sleep 60 & echo child $!; wait", stop_grace=0.5))
                status = await sup.wait_for(
                    "tree",
                    "a",
                    lambda s: s is not None and any(x.startswith("child ") for x in s.tail),
                )
                assert status is not None and status.pid is not None
                pids = [
                    status.pid,
                    int(next(x for x in status.tail if x.startswith("child ")).split()[1]),
                ]
                scope.cancel()
                await trio.sleep_forever()
    assert pids
    assert not any(pid_alive(pid) for pid in pids)
    assert not process_group_alive(pids[0])


async def test_group_is_cleared_when_the_command_crashes() -> None:
    with trio.fail_after(15):
        async with open_supervisor(backoff=FAST) as sup:
            sup.set("leaky", "a", sh("sleep 60 & echo child $!; exit 2", stop_grace=0.5))
            status = await sup.wait_for("leaky", "a", state_is("backoff", "failed"))
            assert status is not None
            child = int(next(x for x in status.tail if x.startswith("child ")).split()[1])
            assert not pid_alive(child)
            sup.stop("leaky", "a")


async def test_clean_exit_policies() -> None:
    with trio.fail_after(15):
        async with open_supervisor(backoff=FAST) as sup:
            sup.set("once", "a", sh("exit 0", restart="on-failure"))
            sup.set("again", "a", sh("echo tick", restart="periodic", interval=0.1))
            sup.set("always", "a", sh("exit 0"))
            exited = await sup.wait_for("once", "a", state_is("exited"))
            assert exited is not None and exited.run_count == 1 and exited.failures == 0
            again = await sup.wait_for("again", "a", lambda s: s is not None and s.run_count >= 3)
            assert again is not None and again.failures == 0
            always = await sup.wait_for("always", "a", state_is("backoff", "failed"))
            assert always is not None and always.failures >= 1  # an exit of a service is a failure
            sup.start("once", "a")
            rerun = await sup.wait_for(
                "once", "a", lambda s: s is not None and s.run_count == 2 and s.state == "exited"
            )
            assert rerun is not None


async def test_a_command_that_cannot_start_backs_off_with_the_reason() -> None:
    with trio.fail_after(15):
        async with open_supervisor(backoff=FAST) as sup:
            sup.set("ghost", "a", ProcessSpec(argv=["/nonexistent/stagemesh-test-binary"]))
            status = await sup.wait_for("ghost", "a", state_is("backoff"))
    assert status is not None
    assert status.run_count == 0
    assert status.last_error is not None and "cannot start" in status.last_error
    assert "No such file" in status.last_error


async def test_a_nul_in_a_spec_is_a_failed_start_not_a_crash() -> None:
    """Validation refuses a NUL before a spec is built; should one reach the supervisor anyway
    (argv, environment or a directory to create), the start fails with ``last_error`` and the
    supervisor keeps running its other instances."""
    with trio.fail_after(15):
        async with open_supervisor(backoff=FAST) as sup:
            sup.set("ok", "a", sh("sleep 30"))
            sup.set("nul", "argv", ProcessSpec(argv=["sleep", "3\x000"]))
            sup.set("nul", "env", ProcessSpec(argv=["sleep", "30"], env={"TZ": "U\x00TC"}))
            sup.set("nul", "dir", ProcessSpec(argv=["sleep", "30"], ensure_dirs=["/tmp/a\x00b"]))
            for uuid in ("argv", "env", "dir"):
                status = await sup.wait_for("nul", uuid, state_is("backoff"))
                assert status is not None and status.run_count == 0
                assert status.last_error is not None and "\n" not in status.last_error
                assert "null byte" in status.last_error, status.last_error
            assert "cannot start 'sleep'" in (sup.status("nul", "argv") or status).last_error
            assert "cannot create directory" in (sup.status("nul", "dir") or status).last_error
            running = await sup.wait_for("ok", "a", state_is("running"))
            assert running is not None and running.pid is not None


async def test_new_spec_restarts_and_same_spec_does_not() -> None:
    with trio.fail_after(15):
        async with open_supervisor(backoff=FAST) as sup:
            events = sup.subscribe()
            sup.set("svc", "a", sh("exec sleep 60"))
            first = await sup.wait_for("svc", "a", state_is("running"))
            assert first is not None
            sup.set("svc", "a", sh("exec sleep 60"))
            assert sup.status("svc", "a") == first
            sup.set("svc", "a", sh("exec sleep 61"))
            second = await sup.wait_for(
                "svc", "a", lambda s: s is not None and s.state == "running" and s.run_count == 2
            )
            assert second is not None and second.argv[-1] == "exec sleep 61"
            sup.remove("svc", "a")
            gone = await sup.wait_for("svc", "a", lambda s: s is None)
            assert gone is None
            assert sup.snapshot().processes == ()
            seen = []
            while True:
                try:
                    seen.append(events.receive_nowait().state)
                except trio.WouldBlock:
                    break
    assert seen == ["starting", "running", "stopping", "starting", "running", "stopping", "stopped"]
    stats = sup.statistics()
    assert stats.events_emitted == len(seen) and stats.events_dropped == 0


async def test_last_error_says_why_a_role_cannot_start_in_the_station_status(
    tmp_path: Path,
) -> None:
    config = RoleConfig.from_dict(
        {
            "command": {
                "ghost": {"timestamp": 1, "command": ["stagemesh-no-such-program", "-x"]},
                "lost": {"timestamp": 1, "command": ["true"], "cwd": "nowhere"},
            }
        }
    )
    with trio.fail_after(15):
        async with open_station(
            tmp_path / "state", initial=config, identity=IDENTITY, backoff=FAST
        ) as station:
            for uuid in ("ghost", "lost"):
                await station.supervisor.wait_for("command", uuid, state_is("backoff", "failed"))
            instances = {i["uuid"]: i for i in station.status()["instances"]}
            nowhere = Path(station.data_dir) / "nowhere"  # relative paths: the data folder
    assert instances["ghost"]["last_error"] == (
        "cannot start 'stagemesh-no-such-program': No such file or directory (not found on PATH)"
    )
    assert instances["lost"]["last_error"] == (
        f"cannot start 'true': working directory '{nowhere}': "
        "No such file or directory"
    )
    assert instances["ghost"]["run_count"] == 0
    assert instances["ghost"]["state"] in ("backoff", "failed")


async def test_a_stop_right_after_set_starts_no_process() -> None:
    events: list[SupervisorEvent] = []
    with trio.fail_after(15):
        async with open_supervisor(backoff=FAST, on_event=events.append) as sup:
            sup.set("svc", "a", sh("exec sleep 60"))
            sup.stop("svc", "a")  # before the runner took the spawn: withdrawn
            status = await sup.wait_for("svc", "a", state_is("stopped"))
            assert status is not None and status.run_count == 0
            sup.start("svc", "a")
            running = await sup.wait_for("svc", "a", state_is("running"))
            assert running is not None and running.run_count == 1
    assert [e.state for e in events][:2] == ["starting", "stopped"]
