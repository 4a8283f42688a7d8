"""The manager core (roles/_manager.py) driven by hand, as h11's state machines are: no
network, no clock, no event loop; each test feeds views, pushes and outcomes and reads the
outputs."""

from __future__ import annotations

import pytest

from roles import (
    DesiredState,
    NotConductor,
    OperatorKey,
    OperatorKeyring,
    Order,
    RemoteAuthority,
    RoleConfig,
    StationAnswer,
)
from roles._authority import ChangeRefused
from roles._manager import (
    ApplyOrders,
    CheckConfig,
    Done,
    Exchange,
    Failed,
    ManagerCore,
    Member,
    MeshView,
    Output,
    Persist,
    PushAnswered,
    Refused,
    Replicate,
    Unreachable,
)

KEY = OperatorKey.generate()
STRANGER = OperatorKey.generate()
AUTHORITY = RemoteAuthority(
    federation="fed", keyed=True, keyring=OperatorKeyring((KEY.public(),))
)
ME = "/ctl/c1"
STATION = "/room-a/s1"


def config(*uuids: str, timestamp: int = 1000) -> RoleConfig:
    return RoleConfig.from_dict(
        {"command": {u: {"timestamp": timestamp, "command": ["sleep", "9"]} for u in uuids}}
    )


def order(*uuids: str, issued: int = 2000, merge: bool = False, station: str = STATION) -> Order:
    made = Order.for_config("fed", station, config(*uuids, timestamp=issued), merge=merge,
                            issued=issued)  # fmt: skip
    return KEY.sign(made)


def view(
    conductor: str | None = ME, term: int | None = 3, **digests: str | None
) -> MeshView:
    """A view with this node, a standby candidate and the stations given as name=digest."""
    members = {ME: Member(candidate=True), "/ctl/c2": Member(candidate=True)}
    for name, digest in digests.items():
        members[f"/room-a/{name}"] = Member(digest=digest)
    return MeshView(ME, conductor, term, members)


def core(**kwargs: object) -> ManagerCore:
    manager = ManagerCore(AUTHORITY, path=ME, now=0.0, candidate=True, **kwargs)  # type: ignore[arg-type]
    manager.update_view(view(s1="d0"))
    return manager


def only(outputs: list[Output], kind: type) -> list:  # type: ignore[type-arg]
    return [o for o in outputs if isinstance(o, kind)]


def answered(outputs: list[Output]) -> PushAnswered:
    (answer,) = only(outputs, PushAnswered)
    return answer  # type: ignore[no-any-return]


def test_a_push_is_checked_then_relayed_and_the_answer_recorded_and_replicated() -> None:
    m = core()
    first = order("cam")
    push = m.push(1.0, first)
    (check,) = m.take_outputs()
    assert isinstance(check, CheckConfig) and check.station == STATION
    assert check.config == config("cam", timestamp=2000)
    assert m.desired == DesiredState()  # nothing kept before the station checked it
    m.check_done(1.1, check.op, Done({"valid": True}))
    outputs = m.take_outputs()
    (apply,) = only(outputs, ApplyOrders)
    assert (apply.station, apply.orders, apply.term, apply.reason) == (STATION, (first,), 3, "push")
    assert only(outputs, Persist)[0].state.chain_for(STATION) == (first,)
    (replicate,) = only(outputs, Replicate)
    assert replicate.targets == ("/ctl/c2",)  # every other live candidate, not the stations
    m.apply_done(1.3, apply.op, Done({"digest": apply.digest, "started": ["command/cam"]}))
    outputs = m.take_outputs()
    answer = answered(outputs)
    assert answer.push == push and answer.error is None and answer.answer is not None
    assert answer.answer["applied"] is True and answer.answer["kept"] is True
    assert answer.answer["started"] == ["command/cam"] and answer.answer["digest"] == apply.digest
    assert m.desired.in_sync(STATION)
    assert only(outputs, Persist) and only(outputs, Replicate)  # the answer, replicated too


def test_a_check_refusal_changes_nothing_and_is_the_answer() -> None:
    m = core()
    m.push(1.0, order("cam"))
    (check,) = m.take_outputs()
    m.check_done(1.1, check.op, Refused("BlockedRole", "role 'stream' is blocked"))
    outputs = m.take_outputs()
    answer = answered(outputs).answer
    assert answer is not None and answer["applied"] is False and answer["kept"] is False
    assert (answer["error_type"], answer["error_family"]) == ("BlockedRole", "BlockedRole")
    assert m.desired == DesiredState() and not only(outputs, Persist)
    m.push(2.0, order("cam", issued=3000))  # the station is free again
    assert only(m.take_outputs(), CheckConfig)


def test_a_station_that_cannot_be_reached_keeps_the_order_pending() -> None:
    m = core()
    pushed = order("cam")
    m.push(1.0, pushed)
    (check,) = m.take_outputs()
    m.check_done(6.0, check.op, Unreachable("RequestTimeout", "no answer within 5 s"))
    outputs = m.take_outputs()
    answer = answered(outputs).answer
    assert answer is not None and answer["pending"] is True and answer["kept"] is True
    assert answer["error_type"] == "RequestTimeout" and "pushed when" in answer["error"]
    assert m.desired.chain_for(STATION) == (pushed,) and only(outputs, Persist)
    # A station with no roles ("UnknownRequest") is refused with NoStation instead.
    m.push(7.0, order("cam", station="/room-a/plain"))
    (check,) = m.take_outputs()
    m.check_done(7.1, check.op, Refused("UnknownRequest", "no handler for 'roles.check'"))
    refused = answered(m.take_outputs()).answer
    assert refused is not None and refused["error_type"] == "NoStation"
    # A request that cannot even be sent is an error for the sender.
    m.push(8.0, order("mic", station="/room-a/other"))
    (check,) = m.take_outputs()
    m.check_done(8.1, check.op, Failed("ValueError", "payload too large"))
    failed = answered(m.take_outputs())
    assert failed.answer is None and failed.error is not None
    assert failed.error.wire_name == "InvalidRequest"


def test_who_may_push() -> None:
    m = core()
    m.update_view(view(conductor="/ctl/c2"))
    with pytest.raises(NotConductor, match="the conductor is /ctl/c2") as info:
        m.push(1.0, order("cam"))
    assert info.value.conductor == "/ctl/c2"
    m.update_view(view())
    with pytest.raises(ChangeRefused) as refused:
        m.push(1.0, STRANGER.sign(Order.for_config("fed", STATION, config("x"), issued=5)))
    assert refused.value.reason == "signature"
    assert refused.value.error.wire_name == "Unauthorized"
    with pytest.raises(ChangeRefused) as unsigned:
        m.push(1.0, Order.for_config("fed", STATION, config("x"), issued=5))
    assert "no operator signature" in str(unsigned.value.error)
    control = KEY.sign(Order.for_control("fed", STATION, "stop", issued=5))
    with pytest.raises(Exception, match="must be a config order"):
        m.push(1.0, control)
    open_federation = RemoteAuthority(federation="fed", keyed=False)
    closed = ManagerCore(open_federation, path=ME, now=0.0)
    closed.update_view(view())
    with pytest.raises(ChangeRefused) as info2:
        closed.check_push()
    assert info2.value.reason == "refused" and "open" in str(info2.value.error)
    assert m.take_outputs() == [] and closed.take_outputs() == []


def test_pushes_for_one_station_wait_their_turn_and_an_older_one_is_stale() -> None:
    m = core()
    first, second = order("cam", issued=2000), order("mic", issued=3000)
    p1 = m.push(1.0, first)
    p2 = m.push(1.0, second)
    (check,) = m.take_outputs()  # one request at a time per station
    assert check.config == config("cam", timestamp=2000)
    m.check_done(1.1, check.op, Done())
    (apply,) = only(m.take_outputs(), ApplyOrders)
    m.apply_done(1.2, apply.op, Done({"digest": apply.digest}))
    outputs = m.take_outputs()
    assert answered(outputs).push == p1
    (check2,) = only(outputs, CheckConfig)
    assert check2.config == config("mic", timestamp=3000)  # the second full push replaces
    m.check_done(1.3, check2.op, Done())
    (apply2,) = only(m.take_outputs(), ApplyOrders)
    assert apply2.orders == (second,)
    m.apply_done(1.4, apply2.op, Done({"digest": apply2.digest}))
    assert answered(m.take_outputs()).push == p2
    m.push(2.0, first)  # older than the last full push: stale, kept nowhere
    stale = answered(m.take_outputs()).answer
    assert stale is not None and stale["error_type"] == "StaleOrder" and stale["kept"] is False
    assert m.desired.chain_for(STATION) == (second,)


def test_the_order_joins_the_desired_state_as_it_is_when_the_check_answers() -> None:
    """What a replica or another station's answer adds while a station checks is kept."""
    m = core()
    m.push(1.0, order("cam"))
    (check,) = m.take_outputs()
    elsewhere = order("mic", station="/room-b/s9")
    m.merge_in(1.05, DesiredState().with_order(elsewhere), answers=False)
    m.check_done(1.1, check.op, Done())
    assert m.desired.chain_for("/room-b/s9") == (elsewhere,)
    assert m.desired.chain_for(STATION) != ()


def test_reconcile_pushes_to_stations_out_of_sync_and_retries_refusals_slowly() -> None:
    m = core(manager_interval=2.0, refused_retry=30.0)
    wanted = order("cam")
    m.merge_in(0.0, DesiredState().with_order(wanted), answers=False)
    m.take_outputs()
    assert m.next_deadline() == 2.0
    m.handle_timer(2.0)  # the station announces d0, not the desired digest
    (apply,) = only(m.take_outputs(), ApplyOrders)
    assert apply.reason == "reconcile" and apply.orders == (wanted,)
    m.handle_timer(4.0)
    assert not only(m.take_outputs(), ApplyOrders)  # one request at a time
    m.apply_done(4.5, apply.op, Refused("StaleOrder", "not newer than what runs"))
    m.take_outputs()
    answer = m.desired.answer_for(STATION)
    assert answer is not None and answer.error_type == "StaleOrder" and not answer.applied
    m.handle_timer(6.5)
    assert not only(m.take_outputs(), ApplyOrders)  # a refusal is retried after 30 s only
    m.handle_timer(35.0)
    (again,) = only(m.take_outputs(), ApplyOrders)
    # A station whose view of the conductor lags (NotConductor) is retried at the next round.
    m.apply_done(35.1, again.op, Refused("NotConductor", "not the conductor in my view"))
    m.take_outputs()
    m.handle_timer(37.5)
    assert only(m.take_outputs(), ApplyOrders)


def test_a_station_announcing_its_desired_digest_is_recorded_in_sync() -> None:
    m = core()
    wanted = order("cam")
    m.merge_in(0.0, DesiredState().with_order(wanted), answers=False)
    digest = m.desired.digest_for(STATION)
    m.update_view(view(s1=digest))
    m.handle_timer(2.0)
    outputs = m.take_outputs()
    assert not only(outputs, ApplyOrders) and only(outputs, Persist)
    assert m.desired.in_sync(STATION) and m.in_sync(STATION)
    assert m.stations()[STATION]["in_sync"] is True


def test_a_merge_push_into_a_stations_own_configuration_is_in_sync() -> None:
    """A merge push is merged into what the station ran (its file): the station then
    announces that digest, which its answer records, so it is not pushed again."""
    m = core()
    m.push(1.0, order("mic", merge=True))
    (check,) = m.take_outputs()
    m.check_done(1.1, check.op, Done())
    (apply,) = only(m.take_outputs(), ApplyOrders)
    m.apply_done(1.2, apply.op, Done({"digest": "file-and-mic"}))
    m.take_outputs()
    answer = m.desired.answer_for(STATION)
    assert answer is not None and answer.station_digest == "file-and-mic"
    m.update_view(view(s1="file-and-mic"))
    for now in (4.0, 6.0, 8.0):
        m.handle_timer(now)
        assert not only(m.take_outputs(), ApplyOrders)
    assert m.in_sync(STATION)


def test_a_new_chain_with_the_same_digest_is_pushed_again() -> None:
    """Found by bench/roles_manager.py (seed 2356): a merge of nothing made the station run
    its file; a later full push of nothing has the same configuration digest, but the station
    runs its file, not nothing, so it must be pushed."""
    m = core()
    m.push(1.0, order(merge=True))  # a merge of no entries
    (check,) = m.take_outputs()
    m.check_done(1.1, check.op, Done())
    (apply,) = only(m.take_outputs(), ApplyOrders)
    m.apply_done(1.2, apply.op, Done({"digest": "the-file"}))
    m.take_outputs()
    m.update_view(view(s1="the-file"))
    assert m.in_sync(STATION)
    m.push(2.0, order(issued=3000))  # a full push of nothing
    (check,) = m.take_outputs()
    m.check_done(2.1, check.op, Unreachable("RequestTimeout", "no answer"))
    m.take_outputs()
    assert m.desired.digest_for(STATION) == apply.digest  # the same configuration digest
    assert not m.in_sync(STATION)
    m.handle_timer(10.0)
    (again,) = only(m.take_outputs(), ApplyOrders)
    assert again.orders == (order(issued=3000),)


def test_a_check_refusal_of_an_order_kept_before_says_it_is_kept() -> None:
    """Found by bench/roles_manager.py (seed 1189): an operator retries a push that was kept
    (its answer was lost); the station's policy changed meanwhile and its check refuses. The
    refusal changed nothing, and the order is still in the desired state: ``kept``."""
    m = core()
    pushed = order("cam")
    m.push(1.0, pushed)
    (check,) = m.take_outputs()
    m.check_done(6.0, check.op, Unreachable("RequestTimeout", "no answer"))
    m.take_outputs()
    m.push(7.0, pushed)
    (check,) = m.take_outputs()
    m.check_done(7.1, check.op, Refused("BlockedRole", "role 'command' is blocked"))
    answer = answered(m.take_outputs()).answer
    assert answer is not None and answer["error_type"] == "BlockedRole"
    assert answer["kept"] is True and m.desired.chain_for(STATION) == (pushed,)


def test_forget_drops_a_station_and_an_older_replica_does_not_bring_it_back() -> None:
    m = core()
    typo = "/room-a/cam9"
    m.push(1.0, order("cam", station=typo))
    (check,) = m.take_outputs()
    m.check_done(1.1, check.op, Unreachable("NoSuchMember", "no live member has path"))
    m.take_outputs()
    before = m.desired
    assert typo in before.station_paths()
    forget = KEY.sign(Order.for_forget("fed", typo, issued=5000))
    m.push(2.0, forget)
    outputs = m.take_outputs()
    answer = answered(outputs).answer
    assert answer is not None and answer["forgotten"] is True and answer["kept"] is True
    assert not only(outputs, CheckConfig)  # nothing is sent to the station
    assert typo not in m.desired.station_paths() and m.desired.forgotten(typo)
    assert m.desired.wanted() == ()
    m.merge_in(3.0, before, answers=True)  # a replica that missed the forget
    assert typo not in m.desired.station_paths()
    m.update_view(view(cam9="d1"))
    m.handle_timer(4.0)
    assert not only(m.take_outputs(), ApplyOrders)
    m.push(5.0, order("cam", issued=6000, station=typo))  # a newer push manages it again
    assert only(m.take_outputs(), CheckConfig)


def test_replicas_keep_only_signed_orders_and_answers_from_the_conductor() -> None:
    m = core()
    m.update_view(view(conductor="/ctl/c2"))
    forged = Order.for_config("fed", STATION, config("evil"), issued=9000)
    theirs = DesiredState(
        stations=[(STATION, (forged,)), ("/room-b/s2", (order("x", station="/room-b/s2"),))],
        answers=[("/room-b/s2", StationAnswer.ok("abc", 1.0))],
    )
    assert m.replica(1.0, theirs, "/room-a/s1") == 1  # from a non-conductor: no answers
    assert m.desired.chain_for(STATION) == () and m.desired.answer_for("/room-b/s2") is None
    assert m.replica(1.0, theirs, "/ctl/c2") == 1
    assert m.desired.answer_for("/room-b/s2") is not None
    assert only(m.take_outputs(), Persist)
    assert not only(m.take_outputs(), Replicate)  # a standby does not replicate


def test_a_standby_candidate_exchanges_its_view_with_the_conductor() -> None:
    m = core(sync_interval=5.0)
    m.update_view(view(conductor="/ctl/c2"))
    m.handle_timer(5.0)
    (exchange,) = only(m.take_outputs(), Exchange)
    assert exchange.target == "/ctl/c2"
    m.update_view(view())
    m.handle_timer(10.0)
    assert not only(m.take_outputs(), Exchange)  # the conductor itself does not
    plain = ManagerCore(AUTHORITY, path=ME, now=0.0)  # a station, not a candidate
    assert plain.next_deadline() == 2.0
