"""The registry store on its own: real databases (a SQLite file, a PostgreSQL database: every
test runs on both), an injected clock, no event loop."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import pytest

from registry_bridge import Conflict, Forbidden, NotFound, RegistryStore, StoreError
from tests.registries import Databases


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(databases: Databases, clock: FakeClock) -> Iterator[RegistryStore]:
    s = RegistryStore(databases.new(), ttl=30.0, clock=clock)
    s.create_federation("sleo")
    s.create_orchestra("sleo", "cmu")
    s.create_orchestra("sleo", "colorado")
    yield s
    s.close()


def reg(store: RegistryStore, orch: str, name: str, **kw: object) -> dict[str, object]:
    return store.register("sleo", orch, name, host="10.0.0.1", port=7471, **kw)  # type: ignore[arg-type]


def test_epoch_is_first_registration_and_elapsed_counts_from_it(
    store: RegistryStore, clock: FakeClock
) -> None:
    assert store.elapsed("sleo")["elapsed"] == 0.0
    clock.now += 5
    reg(store, "cmu", "a")
    clock.now += 12.5
    assert store.elapsed("sleo")["elapsed"] == pytest.approx(12.5)


def test_heartbeat_keeps_alive_and_silence_expires(store: RegistryStore, clock: FakeClock) -> None:
    a = reg(store, "cmu", "a", supernode=True, conductor=True)
    b = reg(store, "cmu", "b")
    for _ in range(4):
        clock.now += 20
        store.heartbeat(str(a["token"]))
    view = store.federation("sleo")
    paths = [n["path"] for o in view["orchestras"] for n in o["nodes"]]
    assert paths == ["/cmu/a"]  # b expired, a kept alive
    with pytest.raises(NotFound):
        store.heartbeat(str(b["token"]))
    assert store.conductor("sleo")["holder"] == "/cmu/a"
    clock.now += 31
    assert store.conductor("sleo") == {
        "holder": None,
        "node_id": None,
        "host": None,
        "port": None,
        "term": 2,
    }
    assert store.federation("sleo")["orchestras"][0]["supernode"] is None


def test_legacy_registrations_expire_after_legacy_ttl_unless_refreshed(
    databases: Databases, clock: FakeClock
) -> None:
    store = RegistryStore(databases.new(), ttl=30.0, legacy_ttl=3600.0, clock=clock)
    store.federation_id("sleo", create=True)
    store.orchestra_id("sleo", "cmu", create=True)
    first = clock.now
    reg(store, "cmu", "old", heartbeat=False, conductor=True)
    reg(store, "cmu", "kept", heartbeat=False)
    clock.now += 3000
    reg(store, "cmu", "kept", heartbeat=False)  # the 2012 client registers again
    view = store.federation("sleo")
    kept = view["orchestras"][0]["nodes"][0]
    assert view["legacy_ttl"] == 3600.0 and kept["path"] == "/cmu/kept"
    assert kept["registered_at"] == first and kept["expires_at"] == clock.now + 3600
    clock.now += 601  # "old" is 3601 s old, "kept" 601 s
    view = store.federation("sleo")
    assert [n["path"] for n in view["orchestras"][0]["nodes"]] == ["/cmu/kept"]
    assert store.conductor("sleo")["holder"] is None  # released with its holder
    clock.now += 3000
    assert store.federation("sleo")["registrations"] == 0
    store.close()


def test_supernode_first_come_unless_takeover(store: RegistryStore) -> None:
    assert reg(store, "cmu", "a", supernode=True)["supernode_granted"] is True
    b = reg(store, "cmu", "b", supernode=True)
    assert b["supernode_granted"] is False
    assert b["supernode"]["path"] == "/cmu/a"  # type: ignore[index]
    c = reg(store, "cmu", "c", supernode=True, takeover=True)
    assert c["supernode_granted"] is True
    assert store.federation("sleo")["orchestras"][0]["supernode"] == "/cmu/c"
    assert store.check_consistency() == []


def test_supernode_learns_other_supernodes(store: RegistryStore) -> None:
    reg(store, "cmu", "a", supernode=True)
    answer = reg(store, "colorado", "z", supernode=True)
    assert [e["path"] for e in answer["other_supernodes"]] == ["/cmu/a"]  # type: ignore[attr-defined]


def test_conductor_claim_and_legacy_refusal(store: RegistryStore) -> None:
    a = reg(store, "cmu", "a", conductor=True, node_id="n-a")
    assert a["conductor_granted"] is True and a["conductor_term"] == 1
    b = reg(store, "cmu", "b", conductor=True)
    assert b["conductor_granted"] is False
    c = reg(store, "cmu", "c", conductor=True, heartbeat=False)
    assert c["conductor_granted"] is False and c["conductor"]["path"] == "/cmu/a"  # type: ignore[index]
    # re-registering the holder keeps the term
    assert reg(store, "cmu", "a", conductor=True, node_id="n-a")["conductor_term"] == 1


def test_a_claim_with_a_token_takes_the_conductor_from_a_legacy_holder(
    store: RegistryStore,
) -> None:
    legacy = reg(store, "cmu", "old", conductor=True, heartbeat=False)
    assert legacy["conductor_granted"] is True
    other = reg(store, "cmu", "older", conductor=True, heartbeat=False)
    assert other["conductor_granted"] is False  # legacy against legacy: first come
    new = reg(store, "colorado", "z", conductor=True, node_id="n-z")
    assert new["conductor_granted"] is True and new["conductor_term"] == 2
    view = store.federation("sleo")
    holders = [n["path"] for o in view["orchestras"] for n in o["nodes"] if n["conductor"]]
    assert holders == ["/colorado/z"] and store.check_consistency() == []


def test_conductor_compare_and_set_fences_by_term(store: RegistryStore) -> None:
    a = str(reg(store, "cmu", "a", node_id="n-a")["token"])
    z = str(reg(store, "colorado", "z")["token"])
    state = store.set_conductor("sleo", token=a, expected_term=0, holder="/cmu/a")
    assert state["holder"] == "/cmu/a" and state["term"] == 1 and state["host"] == "10.0.0.1"
    assert state["node_id"] == "n-a"
    with pytest.raises(Conflict) as info:
        store.set_conductor("sleo", token=z, expected_term=0, holder="/colorado/z")
    assert info.value.detail is not None and info.value.detail["term"] == 1
    with pytest.raises(Forbidden):
        store.set_conductor("sleo", token=z, expected_term=1, holder="/colorado/z")
    with pytest.raises(Forbidden):
        store.set_conductor("sleo", token=z, expected_term=1, holder=None)
    with pytest.raises(NotFound):
        store.set_conductor("sleo", token="nope", expected_term=1, holder=None)
    assert store.set_conductor("sleo", token=a, expected_term=1, holder=None)["term"] == 2
    with pytest.raises(StoreError):
        store.set_conductor("sleo", token=a, expected_term=2, holder="no-slash")
    assert store.check_consistency() == []


def test_tokens_own_registrations(store: RegistryStore) -> None:
    owned = reg(store, "cmu", "a", node_id="one", conductor=True)
    with pytest.raises(Forbidden, match="only that token can remove it"):
        store.unregister_path("sleo", "cmu", "a")
    with pytest.raises(Conflict, match="a legacy register cannot replace it"):
        reg(store, "cmu", "a", heartbeat=False)
    with pytest.raises(Conflict, match="already registered by node one"):
        reg(store, "cmu", "a", takeover=True, supernode=True)
    anonymous = reg(store, "cmu", "b")
    with pytest.raises(Conflict, match="without a node id"):
        reg(store, "cmu", "b")  # nobody can tell it is the same node: its token only
    store.unregister(str(anonymous["token"]))
    assert store.conductor("sleo")["holder"] == "/cmu/a"
    store.heartbeat(str(owned["token"]))
    # legacy registrations have no owner: replaced by anyone, a JSON one included
    reg(store, "cmu", "old", heartbeat=False)
    assert reg(store, "cmu", "old", heartbeat=False, node_id=None)["path"] == "/cmu/old"
    assert store.unregister_path("sleo", "cmu", "old") is True
    reg(store, "cmu", "old", heartbeat=False)
    assert reg(store, "cmu", "old", node_id="upgraded")["path"] == "/cmu/old"


def test_path_held_by_other_live_node_is_refused(store: RegistryStore) -> None:
    reg(store, "cmu", "a", node_id="one")
    with pytest.raises(
        Conflict, match=re.escape("already registered by node one at 10.0.0.1:7471")
    ):
        reg(store, "cmu", "a", node_id="two")
    assert reg(store, "cmu", "a", node_id="one")["path"] == "/cmu/a"


def test_reset_keeps_orchestras_and_increases_term(store: RegistryStore) -> None:
    reg(store, "cmu", "a", conductor=True, supernode=True)
    summary = store.reset_federation("sleo")
    assert summary["registrations"] == 0 and summary["epoch"] is None
    assert summary["orchestras"] == 2 and summary["conductor"]["term"] == 2


def test_delete_removes_everything(store: RegistryStore) -> None:
    reg(store, "cmu", "a")
    store.delete_federation("sleo")
    assert store.federation_id("sleo") == -1
    with pytest.raises(NotFound):
        store.federation("sleo")


def test_names_are_checked(store: RegistryStore) -> None:
    with pytest.raises(StoreError, match="letters, digits"):
        store.create_federation("bad name")
    with pytest.raises(StoreError, match="64"):
        store.create_orchestra("sleo", "x" * 65)


def test_state_survives_reopening(databases: Databases, clock: FakeClock) -> None:
    db = databases.new()
    s = RegistryStore(db, clock=clock)
    s.federation_id("f", create=True)
    s.orchestra_id("f", "o", create=True)
    s.register("f", "o", "n", host="1.2.3.4", port=1)
    s.close()
    again = RegistryStore(db, clock=clock)
    assert again.federation("f")["registrations"] == 1
    again.close()


def test_stores_sharing_a_database_take_turns_sweeping(
    databases: Databases, clock: FakeClock
) -> None:
    """Two stores (two registry processes) on one database: expired registrations are swept
    once a second by one of them, not by each; calls from both at once never fight."""
    db = databases.new()
    a, b = RegistryStore(db, ttl=30.0, clock=clock), RegistryStore(db, ttl=30.0, clock=clock)
    try:
        a.federation_id("sleo", create=True)
        start = clock.now
        reg(a, "cmu", "x", create=True, conductor=True)
        clock.now = start + 29.9
        a.elapsed("sleo")  # sweeps: nothing has expired yet
        clock.now = start + 30.5  # now x has
        assert b.federation("sleo")["registrations"] == 1  # a swept 0.6 s ago: not b's turn
        clock.now = start + 31.6  # a second after b's last look, and after a's sweep
        assert b.federation("sleo")["registrations"] == 0
        assert a.conductor("sleo")["term"] == 2  # released once

        for i in range(40):
            reg(a if i % 2 else b, "cmu", f"n{i}", conductor=i == 0)
        clock.now += 31
        errors: list[BaseException] = []

        def hammer(store: RegistryStore) -> None:
            try:
                for _ in range(30):
                    store.elapsed("sleo")
                    clock.now += 0.1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=hammer, args=(s,)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        assert a.federation("sleo")["registrations"] == 0
        assert b.conductor("sleo")["term"] == 4 and a.check_consistency() == []
    finally:
        a.close()
        b.close()
