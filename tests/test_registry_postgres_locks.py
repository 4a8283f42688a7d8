"""Registries on PostgreSQL lock one federation at a time: two registry processes racing
for one federation's conductor never grant two, while another federation's writes go on; a
federation whose lock is held does not hold up another's. Real ``stagemesh registry``
processes on the session's real PostgreSQL cluster."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import trio

from registry_bridge import RegistryStore
from registry_bridge._postgres import FEDERATION_LOCK, federation_key
from tests.harness import wait_for
from tests.postgres import Cluster
from tests.registries import MIGRATED_TEMPLATE, running_registry
from tests.test_registry_postgres import NO_LIMIT, gather

ROUNDS = 25
CANDIDATES = 12
API = "/api/v1/federations/"


async def test_two_registries_racing_for_one_federations_conductor_grant_one_while_another_federation_writes(  # noqa: E501
    postgres_cluster: Cluster,
) -> None:
    """Round after round in ONE federation, candidates claim the free conductor post at once
    through two registry processes on one database, half by compare-and-set and half by
    registering anew with ``conductor: true``: exactly one claim wins each round, and both
    registries show that winner and the same term. Meanwhile registrations and heartbeats of
    a second federation go to both registries all along and every one is acknowledged."""
    db = postgres_cluster.new_database(template=MIGRATED_TEMPLATE)
    with trio.fail_after(180):
        async with (
            running_registry(db, *NO_LIMIT) as url_a,
            running_registry(db, *NO_LIMIT) as url_b,
            httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_connections=64)) as http,
        ):
            urls = (url_a, url_b)
            numbers = itertools.count()
            race = API + "race"

            def register(i: int, fed: str, conductor: bool = False) -> Callable[[], Awaitable[Any]]:
                n = next(numbers)
                body = {
                    "orchestra": f"o{i % 3}",
                    "name": f"n{n}",
                    "node_id": f"id{n}",
                    "create": True,
                    "conductor": conductor,
                }
                return lambda: http.post(urls[i % 2] + API + fed + "/registrations", json=body)

            # the other federation, written all along through both registries
            other_acks: list[int] = []
            racing = True

            async def other_federation() -> None:
                i = 0
                while racing:
                    made = await register(i, "other")()
                    assert made.status_code == 201, made.text
                    token = made.json()["token"]
                    beat = await http.post(
                        f"{urls[(i + 1) % 2]}/api/v1/registrations/{token}/heartbeat"
                    )
                    assert beat.status_code == 200, beat.text
                    other_acks.append(i)
                    i += 1

            made = await gather([register(i, "race") for i in range(CANDIDATES)])
            assert all(m.status_code == 201 for m in made), [m.text for m in made]
            candidates = [m.json() for m in made]
            term = 0
            async with trio.open_nursery() as nursery:
                nursery.start_soon(other_federation)
                for _ in range(ROUNDS):
                    acks_before = len(other_acks)
                    cas = [
                        (
                            lambda c=c, i=i, term=term: http.post(
                                urls[i % 2] + race + "/conductor",
                                json={
                                    "token": c["token"],
                                    "expected_term": term,
                                    "holder": c["path"],
                                },
                            )
                        )
                        for i, c in enumerate(candidates[: CANDIDATES // 2])
                    ]
                    fresh = [register(i, "race", conductor=True) for i in range(CANDIDATES // 2)]
                    answers = await gather(cas + fresh)
                    by_cas = [a for a in answers[: len(cas)] if a.status_code == 200]
                    assert all(a.status_code in (200, 409) for a in answers[: len(cas)]), [
                        a.text for a in answers
                    ]
                    assert all(a.status_code == 201 for a in answers[len(cas) :])
                    by_register = [a for a in answers[len(cas) :] if a.json()["conductor_granted"]]
                    winners = [a.json()["holder"] for a in by_cas] + [
                        a.json()["path"] for a in by_register
                    ]
                    assert len(winners) == 1, winners
                    seen = [(await http.get(u + race)).json() for u in urls]
                    for view in seen:
                        flagged = [
                            n["path"]
                            for o in view["orchestras"]
                            for n in o["nodes"]
                            if n["conductor"]
                        ]
                        assert flagged == winners and view["conductor"]["holder"] == winners[0]
                    assert seen[0]["conductor"]["term"] == seen[1]["conductor"]["term"] == term + 1
                    # the winner steps down: the post is free again for the next round
                    holder_token = (
                        next(c["token"] for c in candidates if c["path"] == winners[0])
                        if by_cas
                        else by_register[0].json()["token"]
                    )
                    release = {"token": holder_token, "expected_term": term + 1, "holder": None}
                    stepped = await http.post(urls[1] + race + "/conductor", json=release)
                    assert stepped.status_code == 200, stepped.text
                    term += 2
                    # the other federation was acknowledged during the round too
                    await wait_for(
                        lambda n=acks_before: len(other_acks) > n,
                        10,
                        "the other federation's writes",
                    )
                racing = False
            assert len(other_acks) >= ROUNDS


@contextmanager
def holding(db: str, federation: str) -> Iterator[psycopg.Connection[Any]]:
    """Hold *federation*'s lock from a connection of the test's own (a transaction that
    works on that federation and takes its time), until the block ends."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)", (FEDERATION_LOCK, federation_key(federation))
        )
        try:
            yield conn
        finally:
            conn.execute("COMMIT")


async def test_a_federation_whose_lock_is_held_does_not_hold_up_another_federations_writes(
    postgres_cluster: Cluster,
) -> None:
    """While a transaction holds federation ``held``'s lock, a registry asked to register in
    ``held`` waits for it, and meanwhile another registry on the same database acknowledges
    a registration in ``free`` (and a heartbeat of ``held``'s, which locks only its row);
    once the lock is let go the waiting registration is acknowledged too."""
    db = postgres_cluster.new_database(template=MIGRATED_TEMPLATE)
    key = federation_key("held") % 2**32  # as pg_locks shows it (an oid)
    with trio.fail_after(60):
        async with (
            running_registry(db, *NO_LIMIT) as url_a,
            running_registry(db, *NO_LIMIT) as url_b,
            httpx.AsyncClient(timeout=30) as http,
        ):
            first = {"orchestra": "o", "name": "first", "node_id": "1", "create": True}
            made = await http.post(url_a + API + "held/registrations", json=first)
            assert made.status_code == 201
            token = made.json()["token"]
            waiting: list[httpx.Response] = []
            with holding(db, "held") as conn:

                def someone_waits() -> bool:
                    row = conn.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                        " AND NOT granted AND classid = %s AND objid = %s AND objsubid = 2",
                        (FEDERATION_LOCK, key),
                    ).fetchone()
                    return row is not None and row[0] > 0

                async with trio.open_nursery() as nursery:

                    async def held_write() -> None:
                        body = {"orchestra": "o", "name": "late", "node_id": "2"}
                        waiting.append(
                            await http.post(url_b + API + "held/registrations", json=body)
                        )

                    nursery.start_soon(held_write)
                    await wait_for(someone_waits, 10, "registry b waiting for held's lock")
                    free = {"orchestra": "o", "name": "n", "node_id": "3", "create": True}
                    other = await http.post(url_a + API + "free/registrations", json=free)
                    assert other.status_code == 201, other.text
                    beat = await http.post(f"{url_a}/api/v1/registrations/{token}/heartbeat")
                    assert beat.status_code == 200, beat.text
                    assert waiting == [] and someone_waits()  # held's write still waits
                    conn.execute("COMMIT")
                    conn.execute("BEGIN")  # for holding()'s own COMMIT
            assert len(waiting) == 1 and waiting[0].status_code == 201, waiting
            view = (await http.get(url_a + API + "held")).json()
            assert sorted(n["name"] for o in view["orchestras"] for n in o["nodes"]) == [
                "first",
                "late",
            ]


async def test_a_group_commit_call_whose_federation_is_busy_runs_again_alone_after_the_group(
    postgres_cluster: Cluster,
) -> None:
    """In one group commit, a call on federation ``free`` and one on ``held`` (whose lock a
    test connection holds): the group does not wait while it holds ``free``'s lock; it commits
    the ``free`` registration, then the ``held`` call waits for its lock alone, and succeeds
    once the lock is let go."""
    db = postgres_cluster.new_database(template=MIGRATED_TEMPLATE)
    store = RegistryStore(db)
    key = federation_key("held") % 2**32
    try:
        calls = [
            functools.partial(
                store.register, fed, "o", name, host="127.0.0.1", port=7471, create=True
            )
            for fed, name in (("free", "a"), ("held", "b"))
        ]
        with trio.fail_after(30), holding(db, "held") as conn:

            def count(sql: str, *args: object) -> int:
                row = conn.execute(sql, args).fetchone()
                return int(row[0]) if row is not None else 0

            def free_committed_and_held_waits() -> bool:
                free = count(
                    "SELECT count(*) FROM registrations r JOIN federations f"
                    " ON f.id = r.federation_id WHERE f.name = 'free'"
                )
                waits = count(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND classid = %s AND objid = %s AND objsubid = 2",
                    FEDERATION_LOCK,
                    key,
                )
                return free == 1 and waits == 1

            outcomes: list[list[tuple[bool, Any]]] = []
            async with trio.open_nursery() as nursery:

                async def group() -> None:
                    outcomes.append(await trio.to_thread.run_sync(store.run_group, calls))

                nursery.start_soon(group)
                await wait_for(free_committed_and_held_waits, 10, "free committed, held waiting")
                assert outcomes == []
                conn.execute("COMMIT")
                conn.execute("BEGIN")  # for holding()'s own COMMIT
        [results] = outcomes
        assert [ok for ok, _ in results] == [True, True], results
        assert [r["path"] for _, r in results] == ["/o/a", "/o/b"]
        assert store.check_consistency() == []
    finally:
        store.close()
