"""The relay through the registry: supernodes of two sites pass signed datagrams through it.

The queue is in the database, so the tests run on both backends; the last one runs two
registry processes over one database and relays from one to the other.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
import trio

from registry_bridge import NotFound, RegistryStore, StoreError
from registry_bridge._relaystore import BATCH_LIMIT, FRAME_TTL, QUEUE_LIMIT
from tests.registries import Databases, running_registry

REG = "/api/v1/federations/sleo/registrations"


class Clock:
    """A settable wall clock for the store."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def supernodes(store: RegistryStore) -> tuple[str, str]:
    """Tokens of the supernodes /cmu/alice and /colorado/bob of federation sleo."""
    a = store.register(
        "sleo", "cmu", "alice", host="10.0.0.1", port=7471, supernode=True, create=True
    )
    b = store.register(
        "sleo", "colorado", "bob", host="10.0.1.1", port=7471, supernode=True, create=True
    )
    return a["token"], b["token"]


def test_frames_reach_the_supernode_they_are_for_once_in_order(databases: Databases) -> None:
    store = RegistryStore(databases.new(), create=True)
    try:
        alice, bob = supernodes(store)
        sent = [bytes([i]) * (i + 1) for i in range(5)]
        answer = store.relay_queue(alice, "/colorado/bob", sent)
        assert answer == {"to": "/colorado/bob", "queued": 5, "dropped": 0}
        assert store.relay_take(alice) == []  # nothing is queued for the sender
        taken = store.relay_take(bob)
        assert [t["frame"] for t in taken] == sent
        assert {t["from"] for t in taken} == {"/cmu/alice"}
        assert store.relay_take(bob) == []  # taken once
        assert store.relay_take(bob, limit=2) == []
        store.relay_queue(bob, "/cmu/alice", [b"x"] * 3)
        assert len(store.relay_take(alice, limit=2)) == 2
        assert len(store.relay_take(alice)) == 1
    finally:
        store.close()


def test_the_queue_is_bounded_and_frames_expire(databases: Databases) -> None:
    clock = Clock()
    store = RegistryStore(databases.new(), create=True, clock=clock)
    try:
        alice, bob = supernodes(store)
        dropped = 0
        for i in range(0, QUEUE_LIMIT + 40, BATCH_LIMIT // 2):
            frames = [i.to_bytes(2, "big") + bytes([k]) for k in range(BATCH_LIMIT // 2)]
            dropped += store.relay_queue(alice, "/colorado/bob", frames)["dropped"]
        total = len(range(0, QUEUE_LIMIT + 40, BATCH_LIMIT // 2)) * (BATCH_LIMIT // 2)
        assert dropped == total - QUEUE_LIMIT
        kept = []
        while batch := store.relay_take(bob):
            kept += [t["frame"] for t in batch]
        assert len(kept) == QUEUE_LIMIT  # the newest, oldest first
        assert kept[-1] == (total - BATCH_LIMIT // 2).to_bytes(2, "big") + bytes([31])

        store.relay_queue(alice, "/colorado/bob", [b"old"])
        clock.now += FRAME_TTL + 0.5
        store.relay_queue(alice, "/colorado/bob", [b"new"])
        assert [t["frame"] for t in store.relay_take(bob)] == [b"new"]
    finally:
        store.close()


def test_bad_input_is_refused_with_a_reason(databases: Databases) -> None:
    store = RegistryStore(databases.new(), create=True)
    try:
        alice, _ = supernodes(store)
        cases: list[tuple[Any, Any, str]] = [
            ("colorado/bob", [b"x"], "must be a path"),
            ("/colorado/..", [b"x"], "may not be"),
            ("/colorado/bob", [], "1 to 64 frames"),
            ("/colorado/bob", [b"x"] * (BATCH_LIMIT + 1), "1 to 64 frames"),
            ("/colorado/bob", [b""], "1 to 32768 bytes"),
            ("/colorado/bob", [b"x" * 32769], "1 to 32768 bytes"),
        ]
        for to, frames, says in cases:
            with pytest.raises(StoreError, match=says):
                store.relay_queue(alice, to, frames)
        with pytest.raises(NotFound, match="no supernode /colorado/carol"):
            store.relay_queue(alice, "/colorado/carol", [b"x"])
        with pytest.raises(NotFound, match="unknown or expired"):
            store.relay_take("no-such-token")
    finally:
        store.close()


async def take(http: httpx.AsyncClient, token: str, wait: float = 0) -> httpx.Response:
    return await http.post(f"/api/v1/registrations/{token}/relay/take", json={"wait": wait})


async def test_a_frame_queued_through_one_registry_process_reaches_a_long_poll_on_another(
    databases: Databases,
) -> None:
    """Two registry processes over one database: bob long-polls the second, alice queues
    through the first; the frame arrives within the poll (the queue is in the database)."""
    db = databases.new()
    with trio.fail_after(40):
        async with (
            running_registry(db) as first,
            running_registry(db) as second,
            httpx.AsyncClient(base_url=first, timeout=30) as one,
            httpx.AsyncClient(base_url=second, timeout=30) as two,
        ):
            body = {"orchestra": "cmu", "name": "alice", "create": True, "supernode": True}
            alice = (await one.post(REG, json=body)).json()["token"]
            body = {"orchestra": "colorado", "name": "bob", "create": True, "supernode": True}
            bob = (await two.post(REG, json=body)).json()["token"]

            empty = await take(two, bob, wait=0.2)
            assert empty.status_code == 200 and empty.json() == {"frames": []}

            frame = bytes(range(200)) * 6
            got: list[httpx.Response] = []

            async def poll() -> None:
                got.append(await take(two, bob, wait=20))

            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)  # waiting, or not yet: either order must deliver
                queued = await one.post(
                    f"/api/v1/registrations/{alice}/relay",
                    json={"to": "/colorado/bob", "frames": [base64.b64encode(frame).decode()]},
                )
                assert queued.status_code == 202, queued.text
                assert queued.json() == {"to": "/colorado/bob", "queued": 1, "dropped": 0}
            [answer] = got
            assert trio.current_time() - started < 10  # the frame ended the wait
            assert answer.status_code == 200
            [item] = answer.json()["frames"]
            assert item["from"] == "/cmu/alice"
            assert base64.b64decode(item["frame"]) == frame
            assert 0 <= item["age"] < 5

            bad = await one.post(
                f"/api/v1/registrations/{alice}/relay",
                json={"to": "/colorado/bob", "frames": ["not base64!"]},
            )
            assert bad.status_code == 400 and "base64" in bad.json()["error"]
            too_long = await take(two, bob, wait=26)
            assert too_long.status_code == 400 and "wait" in too_long.json()["error"]
