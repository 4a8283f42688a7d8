"""The registry store on its own: real SQLite files, an injected clock, no event loop."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from registry_bridge import Conflict, NotFound, RegistryStore, StoreError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> RegistryStore:
    s = RegistryStore(tmp_path / "r.db", ttl=30.0, clock=clock)
    s.create_federation("sleo")
    s.create_orchestra("sleo", "cmu")
    s.create_orchestra("sleo", "colorado")
    return s


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


def test_legacy_registrations_do_not_expire(store: RegistryStore, clock: FakeClock) -> None:
    reg(store, "cmu", "old", heartbeat=False)
    clock.now += 3600
    assert store.federation("sleo")["registrations"] == 1


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
    a = reg(store, "cmu", "a", conductor=True)
    assert a["conductor_granted"] is True and a["conductor_term"] == 1
    b = reg(store, "cmu", "b", conductor=True)
    assert b["conductor_granted"] is False
    with pytest.raises(Conflict, match="conductor already registered: /cmu/a"):
        reg(store, "cmu", "c", conductor=True, conductor_required=True)
    # re-registering the holder keeps the term
    assert reg(store, "cmu", "a", conductor=True)["conductor_term"] == 1


def test_conductor_compare_and_set_fences_by_term(store: RegistryStore) -> None:
    reg(store, "cmu", "a", node_id="n-a")
    reg(store, "colorado", "z")
    state = store.set_conductor("sleo", expected_term=0, holder="/cmu/a", node_id="n-a")
    assert state["holder"] == "/cmu/a" and state["term"] == 1 and state["host"] == "10.0.0.1"
    with pytest.raises(Conflict) as info:
        store.set_conductor("sleo", expected_term=0, holder="/colorado/z")
    assert info.value.detail is not None and info.value.detail["term"] == 1
    assert store.set_conductor("sleo", expected_term=1, holder=None)["term"] == 2
    with pytest.raises(StoreError):
        store.set_conductor("sleo", expected_term=2, holder="no-slash")
    assert store.check_consistency() == []


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


def test_state_survives_reopening(tmp_path: Path, clock: FakeClock) -> None:
    s = RegistryStore(tmp_path / "r.db", clock=clock)
    s.federation_id("f", create=True)
    s.orchestra_id("f", "o", create=True)
    s.register("f", "o", "n", host="1.2.3.4", port=1)
    s.close()
    again = RegistryStore(tmp_path / "r.db", clock=clock)
    assert again.federation("f")["registrations"] == 1
