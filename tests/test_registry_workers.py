"""``stagemesh registry --workers 2``: two processes, one port, one database, one state.

Which process answers is made deterministic by pinning: every process listens on the port
(``SO_REUSEPORT``) and the kernel picks one per connection, so a test opens one keep-alive
connection at a time, looks up in /proc which process holds the server's end of it, and keeps
it only if that is the process it wants; every answer is checked to come from it.
"""

from __future__ import annotations

import base64
import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from tests.registries import Databases, start_registry

PASSWORD = "s3cret"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}


async def start_workers(db: str, workers: int = 2) -> tuple[trio.Process, str, list[int]]:
    """A registry with *workers* processes: the process, its URL and its worker children."""
    proc, url = await start_registry(
        db, "--workers", str(workers), env={"STAGEMESH_ADMIN_PASSWORD": PASSWORD}
    )
    return proc, url, children(proc.pid)


def children(pid: int) -> list[int]:
    """The child processes of *pid* (Linux /proc)."""
    return [
        int(kid)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for kid in (task / "children").read_text().split()
    ]


def _sockets(pid: int) -> set[str]:
    """The socket inodes process *pid* holds."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def _established() -> list[tuple[int, int, str]]:
    """(local port, remote port, inode) of every established IPv4 TCP socket."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "01":
            rows.append((int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16), f[9]))
    return rows


def serving(port: int, candidates: list[int]) -> int | None:
    """Which of *candidates* holds the server's end of this process's connection to *port*."""
    table = _established()
    mine = _sockets(os.getpid())
    clients = {local for local, remote, inode in table if remote == port and inode in mine}
    ends = {inode for local, remote, inode in table if local == port and remote in clients}
    for pid in candidates:
        if _sockets(pid) & ends:
            return pid
    return None


@asynccontextmanager
async def only(pid: int, others: list[int], url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests are all served by process *pid*: one keep-alive connection,
    opened again until the kernel gave it to *pid*; every answer is checked to come from it."""
    port = int(url.rpartition(":")[2])
    everyone = [pid, *others]

    async def check(response: httpx.Response) -> None:
        assert serving(port, everyone) == pid, "the answer came from another process"

    for _ in range(60):
        http = httpx.AsyncClient(base_url=url, timeout=5, limits=httpx.Limits(max_connections=1))
        await http.get("/api/v1/federations")
        if serving(port, everyone) == pid:
            break
        await http.aclose()
    else:
        raise AssertionError(f"60 connections and none was served by process {pid}")
    http.event_hooks["response"] = [check]
    try:
        yield http
    finally:
        await http.aclose()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) is not alive either
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"


async def wait_gone(pid: int) -> None:
    while alive(pid):
        await trio.sleep(0.02)


async def test_tokens_cas_and_csrf_hold_across_workers(databases: Databases) -> None:
    with trio.fail_after(40):
        proc, url, kids = await start_workers(databases.new())
        try:
            assert len(kids) == 1
            first, second = proc.pid, kids[0]
            reg = "/api/v1/federations/sleo/registrations"
            cas = "/api/v1/federations/sleo/conductor"
            async with only(first, [second], url) as http:
                a = await http.post(reg, json={"orchestra": "o", "name": "a", "create": True})
                assert a.status_code == 201
                token_a = a.json()["token"]
                claim = {"token": token_a, "expected_term": 0, "holder": "/o/a"}
                r = await http.post(cas, json=claim)
                assert r.status_code == 200 and r.json()["term"] == 1
                page = await http.get("/federations/sleo/admin", headers=AUTH)
                match = re.search(
                    r'action="/federations/sleo/reset">\s*<input[^>]*value="(\w+)"', page.text
                )
                assert match is not None
                csrf_reset = match.group(1)
                session = page.cookies["stagemesh_admin"]
            async with only(second, [first], url) as http:
                # a token issued by the first process is known to the second
                assert (await http.post(f"/api/v1/registrations/{token_a}/heartbeat")).is_success
                # the compare-and-set sees the term the first process set, and fences by it
                stale = await http.post(
                    cas, json={"token": token_a, "expected_term": 0, "holder": None}
                )
                assert stale.status_code == 409
                assert stale.json()["current"]["term"] == 1
                assert stale.json()["current"]["holder"] == "/o/a"
                b = await http.post(reg, json={"orchestra": "o", "name": "b"})
                assert b.status_code == 201
                token_b = b.json()["token"]
                handover = {"token": token_a, "expected_term": 1, "holder": "/o/b"}
                r = await http.post(cas, json=handover)
                assert r.status_code == 200 and r.json()["term"] == 2
                # the admin form (and session) served by the first process is accepted by the
                # second
                http.cookies.set("stagemesh_admin", session)
                reset = await http.post(
                    "/federations/sleo/reset", data={"csrf": csrf_reset}, headers=AUTH
                )
                assert reset.status_code == 303
            async with only(first, [second], url) as http:
                # the reset done by the second process dropped both tokens and bumped the term
                for token in (token_a, token_b):
                    hb = await http.post(f"/api/v1/registrations/{token}/heartbeat")
                    assert hb.status_code == 404
                conductor = (await http.get(cas)).json()
                assert conductor["holder"] is None and conductor["term"] == 3
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
            await wait_gone(second)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_workers_stop_when_the_first_process_is_killed(databases: Databases) -> None:
    with trio.fail_after(30):
        proc, _, kids = await start_workers(databases.new(), workers=3)
        try:
            assert len(kids) == 2
            proc.kill()  # SIGKILL: no chance to stop the others itself
            assert await proc.wait() == -signal.SIGKILL
            for kid in kids:  # reparented; they see the pipe close and stop
                await wait_gone(kid)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_a_dead_worker_stops_the_registry_with_failure(databases: Databases) -> None:
    with trio.fail_after(30):
        proc, _, kids = await start_workers(databases.new())
        try:
            os.kill(kids[0], signal.SIGKILL)
            assert await proc.wait() == 1
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
