"""A registry killed with ``kill -9`` mid-load loses no registration it acknowledged."""

from __future__ import annotations

import os
import signal

import httpx
import pytest
import trio

from tests.registries import Databases, start_registry


# httpx leaves its request-body generator unfinished when the server dies mid-request; that
# is the point of this test, so its ResourceWarning is expected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_kill_9_mid_load_loses_nothing_acknowledged(databases: Databases) -> None:
    db = databases.new()
    acked: list[str] = []
    with trio.fail_after(45):
        proc, url = await start_registry(db)
        try:
            limits = httpx.Limits(max_connections=32)
            async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as http:
                todo = iter(range(2000))

                async def client() -> None:
                    for i in todo:
                        try:
                            r = await http.post(
                                "/api/v1/federations/sleo/registrations",
                                json={"orchestra": f"o{i % 7}", "name": f"n{i}", "create": True},
                            )
                        except httpx.HTTPError:
                            return  # killed before answering: not acknowledged
                        if 200 <= r.status_code < 300:
                            acked.append(r.json()["path"])

                async with trio.open_nursery() as nursery:
                    for _ in range(32):
                        nursery.start_soon(client)
                    while len(acked) < 300:
                        await trio.sleep(0.002)
                    os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert 300 <= len(acked) < 2000, "the kill must land mid-load"

        proc2, url2 = await start_registry(db)
        try:
            async with httpx.AsyncClient(base_url=url2, timeout=10) as http:
                view = (await http.get("/api/v1/federations/sleo")).json()
        finally:
            proc2.send_signal(signal.SIGTERM)
            await proc2.wait()
        assert proc2.returncode == 0  # SIGTERM stops it cleanly
        present = {n["path"] for o in view["orchestras"] for n in o["nodes"]}
        missing = set(acked) - present
        assert not missing, f"{len(missing)} acknowledged registrations lost"
