"""Stations: apply and reconcile, rejected updates change nothing, persistence, requests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings, strategies as st

from roles import (
    REQUEST_KINDS,
    STATE_FILE_NAME,
    BackoffPolicy,
    BlockedRole,
    ConfigFileError,
    InvalidConfiguration,
    InvalidOptions,
    InvalidRequest,
    MissingRoleFactory,
    ProcessStatus,
    RoleConfig,
    RoleEntry,
    Station,
    StationIdentity,
    TooManyInstances,
    error_from_dict,
    open_station,
    process_group_alive,
)

FAST = BackoffPolicy(base=0.05, max_delay=1.0, failed_retry=0.5)
IDENTITY = StationIdentity(hostname="test-host", mac="02:00:00:00:00:01", addresses=("127.0.0.1",))


def sleeper(seconds: int = 60, ts: int = 1, **extra: Any) -> RoleEntry:
    return RoleEntry(ts, {"command": ["sleep", str(seconds)], "stop_grace": 1, **extra})


def cfg(*items: tuple[str, str, RoleEntry]) -> RoleConfig:
    return RoleConfig(tuple(items))


async def all_running(station: Station) -> dict[tuple[str, str], int]:
    """Wait until every configured instance runs; return their pids."""
    pids: dict[tuple[str, str], int] = {}
    for role, uuid, _ in station.config.active():
        status = await station.supervisor.wait_for(
            role, uuid, lambda s: s is not None and s.state == "running"
        )
        assert status is not None and status.pid is not None
        pids[(role, uuid)] = status.pid
    return pids


def open_test_station(state_dir: Path, **kwargs: Any):  # type: ignore[no-untyped-def]
    kwargs.setdefault("identity", IDENTITY)
    kwargs.setdefault("backoff", FAST)
    return open_station(state_dir, **kwargs)


async def test_apply_starts_and_reconciles(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_test_station(tmp_path) as station:
            first = cfg(
                ("command", "keep", sleeper(60)),
                ("command", "change", sleeper(61)),
                ("command", "drop", sleeper(62)),
            )
            result = await station.apply(first)
            assert result.started == (
                ("command", "change"),
                ("command", "drop"),
                ("command", "keep"),
            )
            pids = await all_running(station)

            second = cfg(
                ("command", "keep", sleeper(60, ts=2)),  # newer timestamp, same options
                ("command", "change", sleeper(71, ts=2)),
                ("command", "new", sleeper(63, ts=2)),
            )
            result = await station.apply(second)
            assert result.started == (("command", "new"),)
            assert result.stopped == (("command", "drop"),)
            assert result.restarted == (("command", "change"),)
            assert result.unchanged == (("command", "keep"),)
            new_pids = await all_running(station)
            assert new_pids[("command", "keep")] == pids[("command", "keep")]
            assert new_pids[("command", "change")] != pids[("command", "change")]
            await station.supervisor.wait_for("command", "drop", lambda s: s is None)
            assert not process_group_alive(pids[("command", "drop")])
            assert station.config == second
            summary = station.roles_summary()
            assert summary == {"command": {"configured": 3, "running": 3, "failed": 0}}
            json.dumps(station.status())
            json.dumps(station.show())


async def test_apply_with_merge_keeps_newer_entries_and_honours_tombstones(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_test_station(tmp_path) as station:
            await station.apply(
                cfg(("command", "a", sleeper(60, ts=5)), ("command", "b", sleeper(60, ts=5)))
            )
            old = cfg(("command", "a", sleeper(99, ts=1))).with_removed("command", "b", 6)
            result = await station.apply(old, merge=True)
            assert result.stopped == (("command", "b"),)
            entry = station.config.get("command", "a")
            assert entry is not None and entry.timestamp == 5  # the stale push lost


# --- a rejected update changes nothing --------------------------------------------------------

BASE = cfg(
    ("command", "one", sleeper(60)),
    (
        "record",
        "cam",
        RoleEntry(
            1,
            {
                "device": "/dev/null",
                "output_dir": "OUT",
                "command": ["sleep", "60"],
                "stop_grace": 1,
            },
        ),
    ),
)


def _bad_part(kind: str, n: int) -> tuple[str, str, RoleEntry]:
    if kind == "blocked":
        return ("stream", f"s{n}", RoleEntry(2, {"source": "x", "url": "rtmp://h/x"}))
    if kind == "missing":
        return (f"nosuch{n}", "x", RoleEntry(2, {}))
    if kind == "options":
        return ("record", f"r{n}", RoleEntry(2, {"output_dir": "/tmp"}))
    raise AssertionError(kind)


@st.composite
def bad_updates(draw: st.DrawFn) -> RoleConfig:
    """An update mixing valid changes (that must NOT be applied) with at least one problem."""
    items: list[tuple[str, str, RoleEntry]] = []
    if draw(st.booleans()):
        items.append(("command", "one", sleeper(draw(st.integers(61, 99)), ts=2)))
    if draw(st.booleans()):
        items.append(("command", "extra", sleeper(60, ts=2)))
    kinds = draw(
        st.lists(
            st.sampled_from(["blocked", "missing", "options", "too-many"]), min_size=1, max_size=3
        )
    )
    for n, kind in enumerate(kinds):
        if kind == "too-many":
            items.extend(
                ("encode", f"e{n}-{i}", RoleEntry(2, {"input": "i", "output": "o"}))
                for i in range(2)
            )
        else:
            items.append(_bad_part(kind, n))
    unique = {(r, u): (r, u, e) for r, u, e in items}
    return RoleConfig(tuple(unique.values()))


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(updates=st.lists(bad_updates(), min_size=1, max_size=4), merge=st.booleans())
async def test_rejected_update_leaves_config_and_processes_exactly_as_they_were(
    tmp_path: Path, updates: list[RoleConfig], merge: bool
) -> None:
    state_dir = tmp_path / f"state-{os.urandom(4).hex()}"
    base = RoleConfig(
        tuple(
            (
                r,
                u,
                RoleEntry(e.timestamp, {**e.plain_options(), "output_dir": "rec"})
                if r == "record"
                else e,
            )
            for r, u, e in BASE
        )
    )
    with trio.fail_after(30):
        async with open_test_station(state_dir, blocked_roles={"stream"}) as station:
            await station.apply(base)
            pids = await all_running(station)
            snapshot = station.snapshot()
            saved = (state_dir / STATE_FILE_NAME).read_bytes()
            for update in updates:
                with pytest.raises(
                    (BlockedRole, MissingRoleFactory, InvalidOptions, TooManyInstances)
                ):
                    await station.apply(update, merge=merge)
                assert station.config == base
                assert station.snapshot() == snapshot
                assert {k: s.pid for k in pids if (s := station.supervisor.status(*k))} == pids
                assert (state_dir / STATE_FILE_NAME).read_bytes() == saved
            assert await all_running(station) == pids


# --- persistence ---------------------------------------------------------------------------------


async def test_station_comes_back_with_its_last_config_and_runs_it(tmp_path: Path) -> None:
    config = cfg(("command", "a", sleeper(60)), ("command", "b", sleeper(61)))
    with trio.fail_after(20):
        async with open_test_station(tmp_path) as station:
            await station.apply(config)
            old_pids = await all_running(station)
            await station.stop("command", "b")
        assert not any(process_group_alive(pid) for pid in old_pids.values())
        saved = json.loads((tmp_path / STATE_FILE_NAME).read_text())
        assert saved["held"] == [["command", "b"]]
        assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]

        async with open_test_station(tmp_path) as again:
            assert again.config == config
            running = await again.supervisor.wait_for(
                "command", "a", lambda s: s is not None and s.state == "running"
            )
            assert running is not None and running.pid not in old_pids.values()
            held = again.supervisor.status("command", "b")
            assert held is not None and held.state == "stopped"  # stopped by hand stays stopped
            await again.start("command", "b")
            b = again.supervisor.status("command", "b")
            assert b is not None and b.state == "running"


async def test_station_file_counts_only_where_newer_than_the_saved_config(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_test_station(tmp_path) as station:
            await station.apply(cfg(("command", "a", sleeper(60, ts=5))))
            saved_as_of = station.as_of
        assert station.source == "local" and saved_as_of > 5
        later = saved_as_of + 1000
        initial = cfg(
            ("command", "a", sleeper(70, ts=1)),
            ("command", "b", sleeper(61, ts=1)),
            ("command", "c", sleeper(62, ts=later)),
        )
        async with open_test_station(tmp_path, initial=initial) as again:
            a = again.config.get("command", "a")
            assert a is not None and a.timestamp == 5  # the saved entry beats an older file's
            assert again.config.get("command", "b") is None  # older than the saved config
            assert again.config.get("command", "c") is not None  # newer: merged in
            assert (again.source, again.as_of) == ("file", saved_as_of)  # orders: not newer
            await all_running(again)


async def test_saved_config_now_refused_is_set_aside_and_not_run(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_test_station(tmp_path) as station:
            await station.apply(cfg(("command", "a", sleeper(60))))
        async with open_test_station(tmp_path, blocked_roles={"command"}) as again:
            assert again.config == RoleConfig()
            assert again.snapshot().processes == ()
            assert again.load_error is not None and "blocked" in again.load_error
            assert "set aside" in again.load_error
            assert again.status()["load_error"] == again.load_error
        aside = [name for name in os.listdir(tmp_path) if ".refused-" in name]
        assert len(aside) == 1 and aside[0].startswith(STATE_FILE_NAME)
        # The next start finds a clean (empty) state: it starts without an error.
        async with open_test_station(tmp_path, blocked_roles={"command"}) as third:
            assert third.load_error is None and third.config == RoleConfig()


async def test_initial_config_refused_raises(tmp_path: Path) -> None:
    with trio.fail_after(10), pytest.raises(MissingRoleFactory):
        async with open_test_station(tmp_path, initial=cfg(("nope", "a", RoleEntry(1, {})))):
            raise AssertionError("not reached")


async def test_corrupt_state_file_is_reported_and_set_aside(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE_NAME).write_text("{not json")
    with trio.fail_after(10):
        async with open_test_station(tmp_path) as station:
            assert station.load_error is not None
            assert STATE_FILE_NAME in station.load_error and "invalid JSON" in station.load_error
            assert station.config == RoleConfig()
    assert any(".refused-" in name for name in os.listdir(tmp_path))


# --- requests -------------------------------------------------------------------------------


async def test_request_kinds(tmp_path: Path) -> None:
    payload_config = {
        "command": {
            "talk": {"timestamp": 1, "command": ["sh", "-c", "echo hello $room; exec sleep 60"]}
        }
    }
    with trio.fail_after(20):
        async with open_test_station(tmp_path, variables={"room": "hall-a"}) as station:
            answer = await station.handle_request("roles.apply", {"config": payload_config})
            assert answer["applied"] is True and answer["started"] == ["command/talk"]
            assert answer["digest"] == station.config.digest()
            await station.supervisor.wait_for(
                "command", "talk", lambda s: s is not None and "hello hall-a" in s.tail
            )
            logs = await station.handle_request("roles.logs", {"role": "command"})
            assert "hello hall-a" in logs["lines"]
            shown = await station.handle_request("roles.show", {})
            assert shown["config"] == payload_config
            assert shown["variables"]["hostname"] == "test-host"
            assert "record" in shown["factories"]
            status = await station.handle_request("roles.status", {})
            assert status["identity"]["hostname"] == "test-host"
            json.dumps(shown)

            handlers = station.request_handlers()
            assert sorted(handlers) == sorted(REQUEST_KINDS)
            assert (await handlers["roles.show"]({}))["digest"] == answer["digest"]

            stopped = await station.handle_request(
                "roles.stop", {"role": "command", "uuid": "talk"}
            )
            assert [i["state"] for i in stopped["instances"]] == ["stopped"]
            started = await station.handle_request("roles.start", {})
            assert [i["state"] for i in started["instances"]] == ["running"]
            pid = started["instances"][0]["pid"]
            restarted = await station.handle_request("roles.restart", {"role": "command"})
            assert restarted["instances"][0]["state"] == "running"
            assert restarted["instances"][0]["pid"] != pid

            with pytest.raises(InvalidRequest, match="unknown request kind"):
                await station.handle_request("roles.dance", {})
            with pytest.raises(InvalidRequest, match="no role instance 'command/nope'"):
                await station.handle_request("roles.stop", {"role": "command", "uuid": "nope"})
            with pytest.raises(ConfigFileError) as bad:
                await station.handle_request(
                    "roles.apply", {"config": {"command": {"x": {"timestamp": "now"}}}}
                )
            assert "roles.apply payload" in str(bad.value) and "$.command.x.timestamp" in str(
                bad.value
            )
            with pytest.raises(InvalidConfiguration) as refused:
                await station.handle_request(
                    "roles.apply", {"config": {"command": {"x": {"timestamp": 2}}}}
                )
            back = error_from_dict(refused.value.to_wire())
            assert type(back) is InvalidOptions and back.uuid == "x"
            assert "'command' is missing" in str(back)
            assert station.config.digest() == answer["digest"]


async def test_events_reach_subscribers_and_status(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_test_station(tmp_path) as station:
            events = station.subscribe()
            await station.apply(
                cfg(("command", "crash", RoleEntry(1, {"command": "sh -c 'exit 4'"})))
            )
            seen: list[str] = []
            async for event in events:
                seen.append(event.state)
                if event.state == "backoff":
                    assert event.exit_status == 4
                    break
            assert seen[:3] == ["starting", "running", "backoff"]
            status: ProcessStatus | None = station.supervisor.status("command", "crash")
            assert status is not None and status.last_exit == 4
            summary = station.roles_summary()["command"]
            assert summary["configured"] == 1 and summary["running"] + summary["failed"] <= 1
