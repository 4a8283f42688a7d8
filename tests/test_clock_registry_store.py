"""The registry learns the federation's time (RegistryStore.offer_epoch, POST .../epoch):
a reset or an empty restart while nodes run does not restart ``elapsed``; a reset with no
node running starts it from 0, as in 2012. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from registry_bridge import NotFound, RegistryStore, StoreError, create_app
from registry_bridge._database import open_database
from registry_bridge._openapi import MAX_HANDOVERS
from registry_bridge._postgres import _MIGRATIONS as _postgres_migrations
from registry_bridge._sqlite import _MIGRATIONS as _sqlite_migrations
from registry_bridge._store import handover_source
from registry_bridge._transfer import export_state, import_state
from tests.registries import Databases


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


Stores = Callable[[Clock], RegistryStore]


@pytest.fixture
def stores(databases: Databases) -> Iterator[Stores]:
    """Opens stores on fresh databases (closed at the test's end)."""
    opened: list[RegistryStore] = []

    def open_store(clock: Clock) -> RegistryStore:
        opened.append(RegistryStore(databases.new(), clock=clock))
        return opened[-1]

    yield open_store
    for s in opened:
        s.close()


def register(s: RegistryStore, name: str = "n0", federation: str = "sleo") -> str:
    answer = s.register(federation, "cmu", name, host="10.0.0.1", port=7471, create=True)
    token: str = answer["token"]
    return token


def test_a_reset_while_nodes_run_does_not_restart_elapsed(stores: Stores) -> None:
    clock = Clock()
    s = stores(clock)
    register(s)
    epoch = s.epoch("sleo")
    assert epoch == clock.t
    clock.t += 600.0  # ten minutes into the concert
    s.reset_federation("sleo")
    assert s.epoch_lineage("sleo") == (None, None, None)
    # A supernode registers again and hands over the federation's time (the epoch it measured
    # on the registry's clock, with its lineage): elapsed goes on from 600 s.
    token = register(s, "n1")
    assert s.elapsed("sleo")["elapsed"] == 0.0  # the registry's own fresh epoch, for now
    answer = s.offer_epoch("sleo", token, epoch, "abc123", "1.0f")
    assert answer["accepted"] and answer["epoch"] == epoch and answer["lineage"] == "abc123"
    assert answer["tag"] == "1.0f"  # (a keyed federation's signature, kept as it came)
    assert s.elapsed("sleo")["elapsed"] == pytest.approx(600.0)
    assert s.epoch_lineage("sleo") == (epoch, "abc123", "1.0f")
    # 2012 clients read the same elapsed time.
    legacy = s.register("sleo", "cmu", "old", host="10.0.0.9", port=7471, heartbeat=False)
    assert legacy["elapsed"] == pytest.approx(600.0)


def test_a_reset_when_no_node_runs_starts_elapsed_from_zero(stores: Stores) -> None:
    clock = Clock()
    s = stores(clock)
    register(s)
    clock.t += 600.0
    s.reset_federation("sleo")
    clock.t += 5.0
    answer = s.register("sleo", "cmu", "old", host="10.0.0.9", port=7471, heartbeat=False)
    assert answer["elapsed"] == 0.0  # nobody handed a time over: a new epoch, as in 2012
    epoch, lineage, tag = s.epoch_lineage("sleo")
    assert epoch == clock.t and lineage is not None and lineage.startswith("registry-")
    assert tag is None


def test_the_epoch_only_ever_moves_earlier(stores: Stores) -> None:
    clock = Clock()
    s = stores(clock)
    token = register(s)
    epoch = clock.t
    assert not s.offer_epoch("sleo", token, epoch + 10.0, "young")["accepted"]
    assert not s.offer_epoch("sleo", token, clock.t + 1.0, "future")["accepted"]
    assert s.epoch_lineage("sleo")[0] == epoch
    older = s.offer_epoch("sleo", token, epoch - 30.0, "old", "1.aa")
    assert older["accepted"] and older["elapsed"] == pytest.approx(30.0)
    # the same epoch and lineage signed again (a key rotation): only the tag changes
    again = s.offer_epoch("sleo", token, epoch - 30.0, "old", "2.bb")
    assert again["accepted"] and (again["epoch"], again["lineage"], again["tag"]) == (
        epoch - 30.0,
        "old",
        "2.bb",
    )
    for lineage, tag in (("other", "3.cc"), ("old", None), ("old", "2.bb")):
        assert not s.offer_epoch("sleo", token, epoch - 30.0, lineage, tag)["accepted"]
    assert s.epoch_lineage("sleo") == (epoch - 30.0, "old", "2.bb")


def test_only_a_live_registration_of_the_federation_may_offer(stores: Stores) -> None:
    clock = Clock()
    s = stores(clock)
    register(s)
    stranger = register(s, "x", federation="other")
    with pytest.raises(NotFound):
        s.offer_epoch("sleo", stranger, clock.t - 100.0, "theirs")  # someone else tries
    with pytest.raises(NotFound):
        s.offer_epoch("sleo", "not-a-token", clock.t - 100.0, "theirs")
    assert s.epoch_lineage("sleo")[0] == clock.t
    token = register(s, "n1")
    for bad_epoch, bad_lineage in ((float("nan"), "ok"), (1e12, "ok"), (True, "ok")):
        with pytest.raises(StoreError):
            s.offer_epoch("sleo", token, bad_epoch, bad_lineage)
    for lineage in ("", "x" * 65, "a b", 7):
        with pytest.raises(StoreError):
            s.offer_epoch("sleo", token, clock.t - 1.0, lineage)


async def test_the_http_api_takes_the_offer_and_elapsed_says_the_registry_clock(
    stores: Stores,
) -> None:
    clock = Clock()
    s = stores(clock)
    app = create_app(s, None)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://registry"
    ) as api:
        r = await api.post(
            "/api/v1/federations/sleo/registrations",
            json={"orchestra": "cmu", "name": "n0", "create": True},
        )
        token = r.json()["token"]
        e = (await api.get("/api/v1/federations/sleo/elapsed")).json()
        assert e["clock_t2"] == e["clock_t3"] == clock.t and e["lineage"].startswith("registry-")
        offer = {"token": token, "epoch": clock.t - 42.0, "lineage": "abc"}
        r = await api.post("/api/v1/federations/sleo/epoch", json=offer)
        assert r.status_code == 200 and r.json()["accepted"] and r.json()["elapsed"] == 42.0
        e = (await api.get("/api/v1/federations/sleo/elapsed")).json()
        assert e["lineage"] == "abc" and e["t2"] == 42.0
        r = await api.post("/api/v1/federations/sleo/epoch", json={**offer, "token": "x" * 24})
        assert r.status_code == 404
        r = await api.post("/api/v1/federations/sleo/epoch", json={**offer, "epoch": "soon"})
        assert r.status_code == 400
        r = await api.post("/api/v1/federations/sleo/epoch", json={**offer, "extra": 1})
        assert r.status_code == 400
        # each refusal names the field; a write needs Content-Type: application/json
        for field in ("token", "epoch", "lineage"):
            body = {k: v for k, v in offer.items() if k != field}
            r = await api.post("/api/v1/federations/sleo/epoch", json=body)
            assert r.status_code == 400 and f"'{field}'" in r.json()["error"], r.text
        r = await api.post("/api/v1/federations/sleo/epoch", json={**offer, "lineage": "a b"})
        assert r.status_code == 400 and "lineage" in r.json()["error"], r.text
        for tag in ("", "a b", "t" * 129, 7, ["1.ab"]):
            r = await api.post("/api/v1/federations/sleo/epoch", json={**offer, "tag": tag})
            assert r.status_code == 400 and "tag" in r.json()["error"], r.text
        r = await api.post(
            "/api/v1/federations/sleo/epoch",
            content=json.dumps(offer),
            headers={"Content-Type": "text/plain"},
        )
        assert r.status_code == 415, r.text
        assert (await api.get("/api/v1/federations/sleo/elapsed")).json()["t2"] == 42.0
        # a tag (a keyed federation's signature) is kept as it came and handed back
        r = await api.post(
            "/api/v1/federations/sleo/epoch", json={**offer, "epoch": clock.t - 50.0, "tag": "2.c0"}
        )
        assert r.status_code == 200 and r.json()["tag"] == "2.c0", r.text
        e = (await api.get("/api/v1/federations/sleo/elapsed")).json()
        assert (e["t2"], e["lineage"], e["tag"]) == (50.0, "abc", "2.c0")


def test_export_and_import_keep_the_lineage_a_node_handed_over(stores: Stores) -> None:
    clock = Clock()
    s = stores(clock)
    token = register(s)
    register(s, "n1", federation="other")
    s.offer_epoch("sleo", token, clock.t - 90.0, "abc123", "1.9a")
    document = export_state(s)
    assert [f["lineage"] for f in document["federations"]] == ["abc123", None]
    assert [f["tag"] for f in document["federations"]] == ["1.9a", None]
    moved = stores(clock)
    import_state(moved, document)
    assert moved.epoch_lineage("sleo") == (clock.t - 90.0, "abc123", "1.9a")
    assert moved.epoch_lineage("other") == (clock.t, f"registry-{clock.t:.6f}", None)
    for bad in ("a b", 7, ""):
        broken = {**document, "federations": [{**document["federations"][0], "lineage": bad}]}
        with pytest.raises(StoreError, match="lineage"):
            import_state(stores(clock), broken)
        broken = {**document, "federations": [{**document["federations"][0], "tag": bad}]}
        with pytest.raises(StoreError, match="tag"):
            import_state(stores(clock), broken)
    # an export made before tags and handovers still imports: its epoch the one handover
    untagged = {
        k: v
        for k, v in document["federations"][0].items()
        if k not in ("tag", "handovers", "generation")
    }
    old = stores(clock)
    import_state(old, {**document, "federations": [untagged]})
    assert old.epoch_lineage("sleo") == (clock.t - 90.0, "abc123", None)
    assert old.federation_time("sleo")["generation"]  # a new one


def test_export_and_import_keep_every_handover_and_the_generation(stores: Stores) -> None:
    clock = Clock()
    s = stores(clock)
    token = register(s)
    s.offer_epoch("sleo", token, clock.t - 90.0, "member", "1.9a", source="10.0.0.1")
    s.offer_epoch("sleo", token, clock.t - 900.0, "stranger", source="10.6.6.6")
    before = s.federation_time("sleo")
    document = export_state(s)
    moved = stores(clock)
    import_state(moved, document)
    assert moved.federation_time("sleo") == before
    assert len(before["handovers"]) == 3  # the stranger's, the member's, the registry's own
    # the epoch must be the oldest handover; a source appears once
    fed = document["federations"][0]
    for broken in (
        {**fed, "epoch": clock.t},
        {**fed, "handovers": fed["handovers"] + fed["handovers"][:1]},
        {**fed, "generation": "a b"},
    ):
        with pytest.raises(StoreError):
            import_state(stores(clock), {**document, "federations": [broken]})


def test_a_strangers_older_handover_does_not_hide_a_members(stores: Stores) -> None:
    """One handover per source (client address): a stranger's older epoch, from its own
    address, is kept beside the member's, not instead of it; the nodes pick (the registry
    cannot check tags). The federation's epoch (elapsed, for 2012 clients) is the oldest."""
    clock = Clock()
    s = stores(clock)
    member = register(s)
    own = clock.t
    clock.t += 5.0
    assert s.offer_epoch("sleo", member, own - 1.0, "site", "1.aa", source="192.0.2.1")["accepted"]
    stranger = register(s, "m", federation="sleo")
    answer = s.offer_epoch("sleo", stranger, own - 3600.0, "mallory", source="198.51.100.7")
    assert answer["accepted"] and answer["epoch"] == own - 3600.0
    time = s.federation_time("sleo")
    assert [(h["lineage"], h["tag"]) for h in time["handovers"]] == [
        ("mallory", None),
        ("site", "1.aa"),
        (f"registry-{own:.6f}", None),
    ]
    assert (time["epoch"], time["lineage"]) == (own - 3600.0, "mallory")
    assert s.elapsed("sleo")["elapsed"] == pytest.approx(3605.0)
    # the stranger replaces only its own handover (by an older one), never the member's
    assert s.offer_epoch("sleo", stranger, own - 7200.0, "mallory2", source="198.51.100.7")[
        "accepted"
    ]
    assert not s.offer_epoch("sleo", stranger, own - 60.0, "mallory3", source="198.51.100.7")[
        "accepted"
    ]
    lineages = [h["lineage"] for h in s.federation_time("sleo")["handovers"]]
    assert lineages == ["mallory2", "site", f"registry-{own:.6f}"]
    # a member's handover signed again (a key rotation) replaces its own tag
    assert s.offer_epoch("sleo", member, own - 1.0, "site", "2.bb", source="192.0.2.1")["accepted"]
    assert [h["tag"] for h in s.federation_time("sleo")["handovers"]][1] == "2.bb"
    # an IPv6 client counts by its /64
    assert handover_source("2001:db8:1:2::7") == handover_source("2001:db8:1:2:ffff::1")
    assert handover_source("2001:db8:1:3::7") != handover_source("2001:db8:1:2::7")
    assert handover_source("::ffff:192.0.2.1") == "192.0.2.1"


def test_handovers_are_bounded_and_a_flood_cannot_push_out_a_live_one(stores: Stores) -> None:
    clock = Clock()
    s = stores(clock)
    member = register(s)
    clock.t += 5.0
    assert s.offer_epoch("sleo", member, clock.t - 10.0, "site", "1.aa", source="192.0.2.1")[
        "accepted"
    ]
    flood = [register(s, f"m{i}") for i in range(MAX_HANDOVERS + 4)]
    taken = [
        s.offer_epoch("sleo", t, clock.t - 1000.0 - i, f"m{i}", source=f"10.9.0.{i}")["accepted"]
        for i, t in enumerate(flood)
    ]
    # the member's handover and MAX_HANDOVERS - 1 of the flood; the rest not taken
    assert taken == [True] * (MAX_HANDOVERS - 1) + [False] * 5
    time = s.federation_time("sleo")
    assert len(time["handovers"]) == MAX_HANDOVERS + 1  # and the registry's own epoch
    assert "site" in [h["lineage"] for h in time["handovers"]]
    # a handover whose registration is gone makes room (the youngest such; never the oldest)
    s.unregister(flood[3])
    assert s.offer_epoch("sleo", flood[-1], clock.t - 5.0, "late", source="10.9.1.1")["accepted"]
    lineages = [h["lineage"] for h in s.federation_time("sleo")["handovers"]]
    assert "m3" not in lineages and "late" in lineages and "site" in lineages
    assert len(lineages) == MAX_HANDOVERS + 1


def test_a_reset_starts_a_new_generation(stores: Stores) -> None:
    """Keyed nodes sign the generation with the epoch: a reset replaces it (so a handover
    captured before it verifies at no node after it), and an offer made for the old one is
    not taken."""
    clock = Clock()
    s = stores(clock)
    token = register(s)
    first = s.federation_time("sleo")["generation"]
    assert isinstance(first, str) and len(first) == 24
    assert s.offer_epoch("sleo", token, clock.t - 5.0, "site", "1.aa", generation=first)["accepted"]
    s.reset_federation("sleo")
    token = register(s)
    second = s.federation_time("sleo")["generation"]
    assert second != first
    late = s.offer_epoch("sleo", token, clock.t - 5.0, "site", "1.aa", generation=first)
    assert not late["accepted"] and late["generation"] == second
    assert s.offer_epoch("sleo", token, clock.t - 5.0, "site", "1.bb", generation=second)[
        "accepted"
    ]
    with pytest.raises(StoreError, match="generation"):
        s.offer_epoch("sleo", token, clock.t - 5.0, "site", generation="a b")


def test_the_upgrade_to_schema_7_keeps_each_epoch_as_a_handover(databases: Databases) -> None:
    """A version 6 database (one epoch per federation, with the lineage and tag a node handed
    over, or the registry's own) upgraded by ``migrate``: each federation gets a generation of
    its own and keeps its epoch, as its one handover."""
    db = databases.new(migrated=False)
    migrations = _postgres_migrations if databases.backend == "postgresql" else _sqlite_migrations
    database = open_database(db)
    database.begin()
    for statements in migrations[:6]:
        for statement in statements:
            database.execute(statement)
    database.execute("UPDATE schema_version SET version = 6")
    for name, epoch in (("handed", 100.0), ("own", 200.0), ("none", None)):
        database.execute(
            "INSERT INTO federations (name, created_at, epoch) VALUES (?, 1.0, ?)", (name, epoch)
        )
    database.execute(
        "INSERT INTO epochs (federation_id, epoch, lineage, tag) SELECT id, 100.0, 'abc', '1.ab'"
        " FROM federations WHERE name = 'handed'"
    )
    database.commit()
    assert database.migrate() == (6, 7)
    database.close()
    s = RegistryStore(db, clock=Clock())
    try:
        handed, own, none = (s.federation_time(n) for n in ("handed", "own", "none"))
        assert handed["handovers"] == [{"epoch": 100.0, "lineage": "abc", "tag": "1.ab"}]
        assert own["handovers"] == [{"epoch": 200.0, "lineage": "registry-200.000000", "tag": None}]
        assert none["handovers"] == [] and none["epoch"] is None
        generations = {t["generation"] for t in (handed, own, none)}
        assert len(generations) == 3 and all(len(str(g)) == 24 for g in generations)
    finally:
        s.close()
