"""Registries on PostgreSQL: several registry processes on one database, and a database that
stops answering. Real ``stagemesh registry`` processes and a real PostgreSQL cluster (the
session's, or one of the test's own when the test stops it)."""

from __future__ import annotations

import base64
import itertools
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from registry_bridge import RegistryStore
from tests.harness import wait_for
from tests.postgres import PASSWORD, Cluster
from tests.registries import (
    MIGRATED_TEMPLATE,
    registry_command,
    registry_http,
    running_registry,
)

NO_LIMIT = ("--register-rate", "0")
ROUNDS = 30
CANDIDATES = 8


async def gather(calls: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run *calls* at once; their results in order."""
    results: list[Any] = [None] * len(calls)

    async def run(i: int) -> None:
        results[i] = await calls[i]()

    async with trio.open_nursery() as nursery:
        for i in range(len(calls)):
            nursery.start_soon(run, i)
    return results


async def test_two_registries_on_one_postgres_never_grant_two_conductors(
    postgres_cluster: Cluster,
) -> None:
    """Candidates register through two registry processes on one database, then all claim
    the conductor at once, half through each process: exactly one wins, round after round,
    both by compare-and-set and by registering with ``conductor: true``."""
    db = postgres_cluster.new_database(template=MIGRATED_TEMPLATE)
    with trio.fail_after(120):
        async with (
            running_registry(db, *NO_LIMIT) as url_a,
            running_registry(db, *NO_LIMIT) as url_b,
            httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=64)) as http,
        ):
            urls = (url_a, url_b)
            numbers = itertools.count()
            for r in range(ROUNDS):
                fed = f"round{r}"
                base = "/api/v1/federations/" + fed

                def register(
                    i: int, conductor: bool = False, base: str = base
                ) -> Callable[[], Awaitable[Any]]:
                    body = {
                        "orchestra": f"o{i % 3}",
                        "name": f"n{next(numbers)}",
                        "node_id": f"id{i}",
                        "create": True,
                        "conductor": conductor,
                    }
                    return lambda: http.post(urls[i % 2] + base + "/registrations", json=body)

                made = await gather([register(i) for i in range(CANDIDATES)])
                assert all(m.status_code == 201 for m in made)
                claims = await gather(
                    [
                        (
                            lambda m=m, i=i, base=base: http.post(
                                urls[(i + 1) % 2] + base + "/conductor",
                                json={
                                    "token": m.json()["token"],
                                    "expected_term": 0,
                                    "holder": m.json()["path"],
                                },
                            )
                        )
                        for i, m in enumerate(made)
                    ]
                )
                statuses = sorted(c.status_code for c in claims)
                assert statuses[0] == 200 and statuses[1:] == [409] * (CANDIDATES - 1), statuses
                winner = next(c.json() for c in claims if c.status_code == 200)
                seen = [(await http.get(u + base + "/conductor")).json() for u in urls]
                assert seen[0] == seen[1] == winner and winner["term"] == 1

                # the holder steps down; everyone registers again at once asking for the post
                token = made[[c.status_code for c in claims].index(200)].json()["token"]
                release = {"token": token, "expected_term": 1, "holder": None}
                assert (await http.post(url_a + base + "/conductor", json=release)).is_success
                asked = await gather([register(i, conductor=True) for i in range(CANDIDATES)])
                granted = [a.json()["path"] for a in asked if a.json()["conductor_granted"]]
                assert len(granted) == 1, granted
                for u in urls:
                    view = (await http.get(u + base)).json()
                    nodes = [n for o in view["orchestras"] for n in o["nodes"]]
                    flagged = [n["path"] for n in nodes if n["conductor"]]
                    assert flagged == granted and view["conductor"]["holder"] == granted[0]
                    assert view["conductor"]["term"] == 3


async def test_a_cut_database_connection_is_replaced_without_an_error(
    postgres_cluster: Cluster,
) -> None:
    db = postgres_cluster.new_database(template=MIGRATED_TEMPLATE)
    name = db.rpartition("/")[2]
    with trio.fail_after(40):
        async with registry_http(db) as http:
            body = {"orchestra": "o", "name": "a", "create": True}
            token = (await http.post("/api/v1/federations/f/registrations", json=body)).json()
            for _ in range(3):
                cut = postgres_cluster.sql(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    f" WHERE datname = '{name}'"
                )
                assert int(cut) >= 1  # the registry's pooled connection
                hb = await http.post(f"/api/v1/registrations/{token['token']}/heartbeat")
                assert hb.status_code == 200, hb.text


async def test_a_database_that_stops_is_a_503_and_the_registry_serves_again_once_it_is_back() -> (
    None
):
    cluster = await trio.to_thread.run_sync(Cluster)  # its own: this test stops it
    try:
        db = cluster.new_database()
        RegistryStore(db).close()  # the schema
        with trio.fail_after(90):
            async with registry_http(db) as http:
                body = {"orchestra": "o", "name": "a", "create": True}
                made = await http.post("/api/v1/federations/f/registrations", json=body)
                token = made.json()["token"]
                await trio.to_thread.run_sync(cluster.stop_server)
                hb = await http.post(f"/api/v1/registrations/{token}/heartbeat")
                assert hb.status_code == 503
                error = hb.json()["error"]
                assert error.startswith(
                    f"database postgresql://stagemesh@127.0.0.1:{cluster.port}/"
                )
                assert PASSWORD not in error and "\n" not in error
                legacy = await http.get("/register", params={"federation": "f", "orchestra": "o"})
                assert legacy.status_code == 400  # bad input is still refused at once
                legacy = await http.get(
                    "/register", params={"federation": "f", "orchestra": "o", "name": "x"}
                )
                assert legacy.status_code == 503 and legacy.text.startswith("Error: database ")
                await trio.to_thread.run_sync(cluster.start_server)

                async def serving() -> bool:
                    hb = await http.post(f"/api/v1/registrations/{token}/heartbeat")
                    return hb.status_code == 200

                # nothing was lost: the registration made before the stop is still there
                await wait_for(serving, 30, "the registry serving again")
    finally:
        await trio.to_thread.run_sync(cluster.stop)


async def test_registries_sharing_a_session_secret_accept_each_others_admin_forms(
    postgres_cluster: Cluster, tmp_path: Path
) -> None:
    """Two registries behind one name: an organiser's admin page comes from one, the button
    press may reach the other; with one ``--session-secret-file`` it is accepted there."""
    db = postgres_cluster.new_database(template=MIGRATED_TEMPLATE)
    secret = tmp_path / "session-secret"
    secret.write_text("x" * 31 + "\n")
    short = registry_command("--session-secret-file", str(secret), "--db", db)
    assert short.returncode == 1 and "holds 31 characters; give at least 32" in short.stderr
    secret.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    env = {"STAGEMESH_ADMIN_PASSWORD": "pw"}
    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:pw").decode()}
    flags = ("--session-secret-file", str(secret))
    with trio.fail_after(60):
        async with (
            registry_http(db, *flags, env=env) as a,
            registry_http(db, *flags, env=env) as b,
        ):
            body = {"orchestra": "o", "name": "n", "create": True}
            assert (await a.post("/api/v1/federations/f/registrations", json=body)).is_success
            page = await a.get("/federations/f/admin", headers=auth)
            match = re.search(
                r'action="/federations/f/reset">\s*<input[^>]*value="(\w+)"', page.text
            )
            assert match is not None
            b.cookies.set("stagemesh_admin", page.cookies["stagemesh_admin"])
            reset = await b.post(
                "/federations/f/reset", data={"csrf": match.group(1)}, headers=auth
            )
            assert reset.status_code == 303
            assert (await a.get("/api/v1/federations/f")).json()["registrations"] == 0
