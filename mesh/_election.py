"""Elections: who is the conductor of the federation and the supernode of each orchestra.

Sans-IO (no trio, no sockets, no clock: ``now`` is federation time, passed in). Each elected
*post* (``"conductor"``, ``"supernode:<orchestra>"``) is a :class:`~mesh._wire.Lease` record that
travels with the gossip. An :class:`ElectionCore` keeps, per post, the one record that wins under
:func:`pick_lease`, given which members may hold the post in this node's membership view (the
runtime passes that view in as :class:`Candidate` values). The rules (DESIGN.md "Elections"):

* An alive incumbent keeps its post: a "better" node joining changes nothing.
* When the holder leaves or is declared dead, the post is vacant; the best candidate (flagged
  before unflagged, then earliest join, then lowest id) claims it with ``term + 1`` after a short
  claim delay. Lower-ranked candidates wait longer (one ``rank_delay`` per place, counted from
  when the best would claim: after the settle time, and after this node last moved up a
  place), so a stale or disagreeing view still ends in a claim, and normally only one node
  claims.
* Every orchestra with a live member has a supernode (any member may hold it if no
  ``--supernode`` one is alive); only ``--conductor`` nodes may conduct.
* Two holders at once (a healed partition, a race): the longer tenure wins, then the lower id
  (on equal tenure, which a handoff chain shares, the higher term first); the loser steps down
  at once and says so with a :class:`SteppedDown` event.
* A leaving holder hands each post to its best successor (:meth:`ElectionCore.handoff`); the
  successor inherits the tenure, so the handoff wins at once, even where the leaver still
  looks alive.

The order on records is total for a given set of valid holders, so :func:`pick_lease` is
commutative, associative and idempotent: every node that has seen the same records and has the
same membership view keeps the same winner, whatever the order messages arrived in.

With an arbiter (the registry), conductor claims are decided outside the mesh, as input and
output like everything else: the core emits a :class:`ClaimRequest` through
:meth:`ElectionCore.take_outputs` instead of claiming, and takes the arbiter's
:class:`ClaimAnswer` with :meth:`ElectionCore.handle_claim_answer`; a holder confirms its post
every ``renew`` seconds, and a holder the arbiter refuses steps down (``"arbiter"``) and stays
out of the post until the arbiter grants it one (it is *deferred*). While the driver reports the
arbiter unreachable (:meth:`ElectionCore.set_arbiter_available`) the local rule applies, so the
LAN never waits for it. :class:`ConductorArbiter` holds the knobs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Container, Iterable

import attrs

from mesh._events import ElectionEvent, PostChanged, SteppedDown
from mesh._names import is_valid_name
from mesh._wire import MAX_COUNTER, Lease

__all__ = [
    "CONDUCTOR",
    "Candidate",
    "ClaimAnswer",
    "ClaimRequest",
    "ConductorArbiter",
    "ElectionCore",
    "ElectionEvent",
    "ElectionOutput",
    "ElectionStatistics",
    "PostChanged",
    "SteppedDown",
    "best_candidate",
    "candidate_rank",
    "is_eligible",
    "pick_lease",
    "post_orchestra",
    "supernode_post",
]

CONDUCTOR = "conductor"
"""The post of the federation's conductor."""

_SUPERNODE = "supernode:"


def supernode_post(orchestra: str) -> str:
    """The post of *orchestra*'s supernode: ``"supernode:<orchestra>"``."""
    return _SUPERNODE + orchestra


def post_orchestra(post: str) -> str | None:
    """The orchestra of a supernode post, or None for the conductor post.

    Raises ValueError for anything that is not a valid post (a lease from the wire may carry
    any short string; the core drops such leases).
    """
    if post == CONDUCTOR:
        return None
    if post.startswith(_SUPERNODE) and is_valid_name(post[len(_SUPERNODE) :]):
        return post[len(_SUPERNODE) :]
    raise ValueError(f"not an elected post: {post!r}")


# ---------------------------------------------------------------------------------------------
# Inputs, events and statistics


@attrs.frozen
class Candidate:
    """One member as the election sees it; the runtime makes these from its membership view.

    ``alive`` is true for members membership calls alive or suspect, false for dead or left
    ones. ``joined_at`` is the federation time at which the member's current run started (a
    restarted node ranks as a newcomer). Flags are the ``--supernode``/``--conductor`` options.
    """

    node_id: str
    orchestra: str
    supernode_flag: bool = False
    conductor_flag: bool = False
    joined_at: float = 0.0
    alive: bool = True


@attrs.frozen
class ClaimRequest:
    """The core asks its arbiter (the registry) to record this node as the conductor.

    ``claim`` is the record this node would announce (``holder`` is this node). ``renewal``
    is true when this node already holds the post and confirms it (every ``renew`` seconds),
    false for a claim. The arbiter grants either only when it records this node or nobody:
    a holder it records keeps the post until it releases it or its registration expires, so a
    node that is only *thought* dead cannot be replaced there.
    """

    claim: Lease
    renewal: bool


@attrs.frozen
class ClaimAnswer:
    """The arbiter's answer to a :class:`ClaimRequest` (``claim`` is the request's).

    ``granted``: the arbiter records this node as the conductor. Refused, ``holder`` names the
    node the arbiter records instead (``None`` if it did not say) and ``term`` is the arbiter's
    fencing term.
    """

    claim: Lease
    granted: bool
    holder: str | None = None
    term: int = 0


ElectionOutput = Lease | ClaimRequest
"""What :meth:`ElectionCore.take_outputs` returns: records to gossip, requests for the arbiter."""


@attrs.frozen
class ElectionStatistics:
    """Counters of one :class:`ElectionCore` (for status pages and tests)."""

    claims: int
    claim_requests: int
    """Claims and renewals sent to the arbiter."""
    refusals: int
    """Arbiter answers that refused this node the conductor."""
    step_downs: int
    handoffs: int
    leases_received: int
    leases_adopted: int
    leases_dropped: int


# ---------------------------------------------------------------------------------------------
# Ranking and the merge rule (pure functions)


def is_eligible(post: str, candidate: Candidate) -> bool:
    """Whether *candidate* may hold *post* now: alive, and ``--conductor`` for the conductor
    post or a member of the orchestra for its supernode post."""
    if not candidate.alive:
        return False
    if post == CONDUCTOR:
        return candidate.conductor_flag
    return post == _SUPERNODE + candidate.orchestra


def candidate_rank(post: str, candidate: Candidate) -> tuple[bool, float, str]:
    """Sort key of candidates for *post*, best first: flagged before unflagged, then earliest
    join, then lowest id."""
    flagged = candidate.conductor_flag if post == CONDUCTOR else candidate.supernode_flag
    return (not flagged, candidate.joined_at, candidate.node_id)


def best_candidate(post: str, candidates: Iterable[Candidate]) -> Candidate | None:
    """The eligible candidate that should claim *post* when it is vacant, or None."""
    eligible = [c for c in candidates if is_eligible(post, c)]
    return min(eligible, key=lambda c: candidate_rank(post, c)) if eligible else None


def _lease_key(lease: Lease, valid: bool) -> tuple[int, float, float, str]:
    # Smaller is better. Valid records: longest tenure, then (same tenure: a handoff chain) the
    # higher term, then the lowest holder id. Records of holders that may not hold the post:
    # the highest term, so the newest knowledge of a vacant post wins. The key holds every
    # field, so the order is total and the winner of any set is unique.
    if valid:
        return (0, lease.tenure_start, float(-lease.term), lease.holder)
    return (1, float(-lease.term), lease.tenure_start, lease.holder)


def pick_lease(a: Lease, b: Lease, valid: Container[str]) -> Lease:
    """The winner of two lease records for the same post; *valid* holds the ids of the members
    that may hold the post now (alive and eligible).

    A valid holder's record beats an invalid one; among valid ones the longer tenure (earlier
    ``tenure_start``) wins, then the higher term (a handoff keeps the tenure and raises the
    term), then the lower holder id; among invalid ones the higher term wins (a claim after a
    death supersedes the dead holder's record). Pure, commutative, associative and
    idempotent. Raises ValueError if the posts differ.
    """
    if a.post != b.post:
        raise ValueError(f"lease records of different posts: {a.post!r} and {b.post!r}")
    ka = _lease_key(a, a.holder in valid)
    kb = _lease_key(b, b.holder in valid)
    return a if ka <= kb else b


# ---------------------------------------------------------------------------------------------
# Arbitration by an outside arbiter


@attrs.frozen
class ConductorArbiter:
    """The knobs of conductor arbitration by an arbiter outside the mesh (the registry's
    compare-and-set with the term as fencing token); giving one to :class:`ElectionCore` turns
    arbitration on. Seconds of federation time.
    """

    retry: float = 1.0
    """A refused claim is asked again after this long (the arbiter's holder may expire)."""
    renew: float = 2.0
    """A holder confirms its post this often, so it learns soon if the arbiter gave it away."""
    timeout: float = 3.0
    """A claim unanswered for this long is asked again."""


# ---------------------------------------------------------------------------------------------
# The core


class _Valid:
    """``holder in _Valid(core, post)``: may *holder* hold *post* in the core's view?"""

    __slots__ = ("_core", "_post")

    def __init__(self, core: ElectionCore, post: str) -> None:
        self._core = core
        self._post = post

    def __contains__(self, holder: object) -> bool:
        return isinstance(holder, str) and self._core._may_hold(self._post, holder)


class ElectionCore:
    """The election state machine of one node (sans-IO; see the module docstring).

    Feed it the membership view (:meth:`update_members` for the whole view,
    :meth:`update_member` / :meth:`remove_member` for one change), lease records from gossip
    and push-pull (:meth:`handle_lease`) and timer ticks (:meth:`handle_timer` at
    :meth:`next_deadline`); gossip what :meth:`take_outputs` returns, send what
    :meth:`handoff` returns with the leave announcement, carry :meth:`leases` in push-pull and
    publish what :meth:`take_events` returns. ``now`` is always federation time.

    Knobs: ``claim_delay`` (seconds a post stays vacant before the best candidate claims it),
    ``rank_delay`` (extra wait per place behind the best candidate, so somebody claims even if
    the best one cannot), ``settle_time`` (no claims this long after start, or after
    :meth:`settle` where the driver holds claims until its node can hear its peers, so a new
    node first learns the leases in force), ``reannounce_interval`` (a holder re-gossips its
    records this often), ``conflict_resend_interval`` (at most this often, answer a conflicting
    live claim with the winning record so its holder steps down fast).
    """

    def __init__(
        self,
        self_id: str,
        now: float,
        *,
        claim_delay: float = 0.3,
        rank_delay: float = 1.0,
        settle_time: float = 1.0,
        reannounce_interval: float = 10.0,
        conflict_resend_interval: float = 0.5,
        arbiter: ConductorArbiter | None = None,
    ) -> None:
        self.self_id = self_id
        self.claim_delay = claim_delay
        self.rank_delay = rank_delay
        self.reannounce_interval = reannounce_interval
        self.conflict_resend_interval = conflict_resend_interval
        self.arbiter = arbiter
        """Arbitration knobs, or ``None``: the local rule alone decides the conductor."""
        self._arbiter_available = True  # until the driver says otherwise
        self._pending: Lease | None = None  # the claim the arbiter has not answered yet
        self._pending_until = -math.inf
        self._next_renew: float | None = None
        self._deferred = False  # the arbiter refused this node: it may not hold the conductor
        self._confirmed: Lease | None = None  # this node's conductor record the arbiter granted
        self._claim_requests = 0
        self._refusals = 0
        self.settle_time = settle_time
        self._settle_until = now + settle_time
        self._claims_held = False  # hold_claims() until settle()
        self._candidates: dict[str, Candidate] = {}
        self._known: Counter[str] = Counter()  # orchestra -> members known (alive or not)
        self._alive: Counter[str] = Counter()  # orchestra -> live members
        self._records: dict[str, Lease] = {}  # post -> winning record (maybe invalid)
        self._max_term: dict[str, int] = {}
        self._holders: dict[str, str] = {}  # post -> holder in force, as last reported
        self._vacant_since: dict[str, float] = {}
        self._ranks: dict[str, tuple[int, float]] = {}  # vacant post -> (rank, when it fell)
        # post -> a live competitor's record that lost to the one in force, when last heard
        self._runners_up: dict[str, tuple[Lease, float]] = {}
        self._claim_due: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}  # post -> when to ask a refusing arbiter again
        self._held_terms: dict[str, int] = {}  # post -> term of this node's record in force
        self._last_resent: dict[str, float] = {}
        self._next_reannounce: float | None = None
        self._last_reannounce = -math.inf
        self._leaving = False
        self._outputs: list[ElectionOutput] = []
        self._events: list[ElectionEvent] = []
        self._claims = 0
        self._step_downs = 0
        self._handoffs = 0
        self._received = 0
        self._adopted = 0
        self._dropped = 0

    # -- inputs ------------------------------------------------------------------------------

    def update_members(self, now: float, candidates: Iterable[Candidate]) -> None:
        """Replace the membership view (every known member, alive or not, this node included).

        O(members); :meth:`update_member` and :meth:`remove_member` take one change at a time.
        """
        before = set(self._known)
        alive_before = {i for i, c in self._candidates.items() if c.alive}
        self._candidates = {c.node_id: c for c in candidates}
        if any(c.alive and c.node_id not in alive_before for c in self._candidates.values()):
            self._member_came_alive(now)
        self._known = Counter(c.orchestra for c in self._candidates.values())
        self._alive = Counter(c.orchestra for c in self._candidates.values() if c.alive)
        for orchestra in before.difference(self._known):
            self._forget(supernode_post(orchestra))  # membership forgot its last member
        self._reconcile(now)

    def update_member(self, now: float, candidate: Candidate) -> None:
        """Add or change one member of the view (same meaning as :meth:`update_members`)."""
        old = self._candidates.get(candidate.node_id)
        if old == candidate:
            return
        if old is not None:
            self._uncount(old)
        self._candidates[candidate.node_id] = candidate
        if candidate.alive and (old is None or not old.alive):
            self._member_came_alive(now)
        self._known[candidate.orchestra] += 1
        if candidate.alive:
            self._alive[candidate.orchestra] += 1
        self._reconcile_changed(now, old, candidate)

    def remove_member(self, now: float, node_id: str) -> None:
        """Drop one member from the view (membership reaped its tombstone)."""
        old = self._candidates.pop(node_id, None)
        if old is not None:
            self._uncount(old)
            self._reconcile_changed(now, old, None)

    def handle_lease(self, now: float, lease: Lease) -> None:
        """Take a lease record received by gossip or push-pull (or from the arbiter)."""
        self._received += 1
        current = self._records.get(lease.post)
        if lease == current:
            return  # a duplicate: nothing can change
        try:
            post_orchestra(lease.post)
        except ValueError:
            self._dropped += 1
            return
        if lease.term > self._max_term.get(lease.post, 0):
            self._max_term[lease.post] = lease.term
        if current is not None and self._arbiter_confirms(current):
            winner = current  # (the other learns at its own renewal; it is told below)
        else:
            winner = lease if current is None else self._pick(current, lease)
        loser = None if current is None else (current if winner is lease else lease)
        if loser is not None and self._may_hold(loser.post, loser.holder):
            self._keep_runner_up(now, loser)
        if winner != current:
            self._records[lease.post] = winner
            self._adopted += 1
            self._outputs.append(winner)  # infection-style: pass news on
        elif (
            self._may_hold(lease.post, lease.holder)
            and self._may_hold(current.post, current.holder)
            and now - self._last_resent.get(lease.post, -math.inf) >= self.conflict_resend_interval
        ):
            # A live competitor still believes it holds the post: tell it who won.
            self._last_resent[lease.post] = now
            self._outputs.append(current)
        self._reconcile_post(now, lease.post)
        self._after_reconcile(now)

    def hold_claims(self) -> None:
        """Make no claim until :meth:`settle` is called: the node cannot hear its peers yet.

        A driver whose node looks for peers only a while after it made the core (its
        discovery starts after its status server, up to a second or more on a loaded host)
        holds claims from the start, then calls :meth:`settle` when discovery runs.
        Otherwise the settle period ran out before the node had looked, and every node of a
        group started together claimed, each alone in its view (8 holders at term 1 for up to
        0.3 s in every soak, ``bench/soak.py``).
        """
        self._claims_held = True
        self._claim_due.clear()

    def settle(self, now: float) -> None:
        """The node can hear its peers from *now*: end a :meth:`hold_claims` and make no
        claim before ``now + settle_time`` (so it first learns the leases in force and the
        candidates around it; a later end only)."""
        self._claims_held = False
        self._settle_until = max(self._settle_until, now + self.settle_time)
        self._reconcile(now)

    def handle_timer(self, now: float) -> None:
        """Do what is due: claim vacant posts this node should claim, re-announce held posts."""
        for post in sorted(p for p, due in self._claim_due.items() if due <= now):
            self._claim(now, post)
            self._reconcile_post(now, post)
        if self._next_reannounce is not None and now >= self._next_reannounce:
            self._reannounce(now)
        if self._next_renew is not None and now >= self._next_renew:
            self._renew(now)
        self._after_reconcile(now)

    def handle_claim_answer(self, now: float, answer: ClaimAnswer) -> None:
        """Take the arbiter's answer to a :class:`ClaimRequest`.

        Granted, this node holds the conductor (even if its view shows another holder: that
        holder will be refused at its next renewal and step down). Refused, a claim is asked
        again after ``retry``; a refused renewal makes this node step down with reason
        ``"arbiter"`` and stay out of the post (:attr:`deferred`) until the arbiter grants it
        a claim, or the arbiter is unreachable while nobody holds the post. Answers to requests
        this node no longer has in mind are ignored.
        """
        arbiter = self.arbiter
        claim = answer.claim
        if arbiter is None or claim.post != CONDUCTOR or claim.holder != self.self_id:
            return
        record = self._records.get(CONDUCTOR)
        was_pending = claim == self._pending
        if was_pending:
            self._pending = None
        if answer.granted:
            if record == claim:
                self._confirmed = record
            if not was_pending or self._leaving:
                return  # a renewal confirmed, or an answer too late to matter
            self._deferred = False
            self._retry_at.pop(CONDUCTOR, None)
            if record is None or record.holder != self.self_id:
                term = max(claim.term, self._next_term(CONDUCTOR))
                self._take(Lease(CONDUCTOR, self.self_id, term, claim.tenure_start))
            self._confirmed = self._records.get(CONDUCTOR)
            self._next_renew = now + arbiter.renew
        else:
            self._confirmed = None
            self._refusals += 1
            if was_pending:
                self._retry_at[CONDUCTOR] = now + arbiter.retry
            elif record == claim and self._may_hold(CONDUCTOR, self.self_id):
                self._deferred = True  # the arbiter gave the post away: step down
                self._next_renew = None
        self._reconcile_post(now, CONDUCTOR)
        self._after_reconcile(now)

    def set_arbiter_available(self, now: float, available: bool) -> None:
        """The driver reached the arbiter (``True``) or failed to (``False``). While it is
        unreachable the local rule applies: claims are made without asking, and a deferred
        node may hold the post again if nobody holds it."""
        if self.arbiter is None or available == self._arbiter_available:
            return
        self._arbiter_available = available
        self._confirmed = None
        self._pending = None
        self._retry_at.pop(CONDUCTOR, None)
        if available:
            if self.holds(CONDUCTOR):
                self._next_renew = now  # confirm the post at once
        elif self._deferred and self.holder(CONDUCTOR) is None:
            self._deferred = False
        self._reconcile_post(now, CONDUCTOR)
        self._after_reconcile(now)

    @property
    def deferred(self) -> bool:
        """Whether the arbiter refused this node the conductor it held: it may not hold the
        post until the arbiter grants it (other nodes learn it from the node's metadata)."""
        return self._deferred

    def handoff(self, now: float) -> list[Lease]:
        """Leave: give every post this node holds to its best successor and stop claiming.

        Returns the records to gossip together with the leave announcement: each names the
        successor with ``term + 1`` and the same tenure start, so it wins at once everywhere.
        A post with no eligible successor falls vacant. Emits :class:`SteppedDown` events with
        reason ``"handoff"``.
        """
        held = self.posts_held()
        self._leaving = True
        out: list[Lease] = []
        for post in held:
            others = (c for c in self._candidates.values() if c.node_id != self.self_id)
            successor = best_candidate(post, others)
            if successor is None:
                continue
            tenure = self._records[post].tenure_start
            record = Lease(post, successor.node_id, self._next_term(post), tenure)
            self._max_term[post] = record.term
            self._records[post] = record
            self._handoffs += 1
            out.append(record)
        self._reconcile(now)
        return out

    # -- outputs -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` should next be called (federation time), or None."""
        times = list(self._claim_due.values())
        if self._next_reannounce is not None:
            times.append(self._next_reannounce)
        if self._next_renew is not None:
            times.append(self._next_renew)
        return min(times) if times else None

    def take_outputs(self) -> list[ElectionOutput]:
        """Lease records to gossip to every node (claims, handoffs, news, re-announcements)
        and, with an arbiter, :class:`ClaimRequest` values for the driver to carry to it."""
        out, self._outputs = self._outputs, []
        return out

    def take_events(self) -> list[ElectionEvent]:
        """Events since the last call: :class:`PostChanged`, :class:`SteppedDown`."""
        out, self._events = self._events, []
        return out

    # -- queries -----------------------------------------------------------------------------

    def holder(self, post: str) -> str | None:
        """Who holds *post* in this node's view, or None if it is vacant."""
        record = self._records.get(post)
        if record is not None and self._may_hold(post, record.holder):
            return record.holder
        return None

    def conductor(self) -> str | None:
        """The conductor's node id in this node's view, or None."""
        return self.holder(CONDUCTOR)

    def supernode(self, orchestra: str) -> str | None:
        """The node id of *orchestra*'s supernode in this node's view, or None."""
        return self.holder(supernode_post(orchestra))

    def supernodes(self) -> dict[str, str]:
        """Orchestra -> supernode id, for every orchestra that has one in this node's view."""
        out: dict[str, str] = {}
        for post in sorted(self._holders):
            orchestra = post_orchestra(post)
            if orchestra is not None:
                out[orchestra] = self._holders[post]
        return out

    def lease(self, post: str) -> Lease | None:
        """The record in force for *post* (None if the post is vacant)."""
        return self._records[post] if self.holder(post) is not None else None

    def leases(self) -> list[Lease]:
        """Every record this node keeps, vacant posts' too (what push-pull carries)."""
        return [self._records[post] for post in sorted(self._records)]

    def holds(self, post: str) -> bool:
        """Whether this node holds *post* in its own view."""
        return self.holder(post) == self.self_id

    def posts_held(self) -> list[str]:
        """The posts this node holds, sorted."""
        me = self.self_id
        return sorted(
            p for p, r in self._records.items() if r.holder == me and self._may_hold(p, me)
        )

    def standby_for_conductor(self) -> bool:
        """Whether this node is a conductor candidate that does not conduct (a standby; the
        holder is :meth:`conductor`)."""
        me = self._candidates.get(self.self_id)
        return (
            me is not None
            and not self._leaving
            and is_eligible(CONDUCTOR, me)
            and not self.holds(CONDUCTOR)
        )

    def statistics(self) -> ElectionStatistics:
        """A snapshot of the counters."""
        return ElectionStatistics(
            claims=self._claims,
            claim_requests=self._claim_requests,
            refusals=self._refusals,
            step_downs=self._step_downs,
            handoffs=self._handoffs,
            leases_received=self._received,
            leases_adopted=self._adopted,
            leases_dropped=self._dropped,
        )

    # -- internals ---------------------------------------------------------------------------

    def _may_hold(self, post: str, holder: str) -> bool:
        if holder == self.self_id and (self._leaving or (self._deferred and post == CONDUCTOR)):
            return False
        candidate = self._candidates.get(holder)
        return candidate is not None and is_eligible(post, candidate)

    def _arbiter_confirms(self, record: Lease) -> bool:
        """Whether *record* is this node's conductor record that the arbiter granted at its
        last answer, and the arbiter is reachable: a competing record (a claim made under the
        local rule while the arbiter was out of reach, meeting this one now) does not make
        this node step down, whatever the local order says; the competitor's own renewal is
        refused. Before, the two records met after the sites' gossip did, the local order
        (same term and tenure: the lower id) made the granted holder step down, and the
        competitor was refused a moment later: the federation saw no conductor until the
        granted one claimed again (chaos seed 204 of the registry sweep)."""
        return (
            record.post == CONDUCTOR
            and record == self._confirmed
            and record.holder == self.self_id
            and self._arbiter_available
            and not self._deferred
        )

    def _pick(self, a: Lease, b: Lease) -> Lease:
        return pick_lease(a, b, _Valid(self, a.post))

    def _take(self, record: Lease) -> None:
        """Hold *record* (this node's claim) and announce it."""
        self._claims += 1
        self._max_term[record.post] = max(record.term, self._max_term.get(record.post, 0))
        self._records[record.post] = record
        self._claim_due.pop(record.post, None)
        self._outputs.append(record)

    def _renew(self, now: float) -> None:
        """Confirm the conductor post this node holds with the arbiter."""
        arbiter = self.arbiter
        record = self._records.get(CONDUCTOR)
        if arbiter is None or not self.holds(CONDUCTOR):
            self._next_renew = None
            return
        # Confirmed even while the arbiter is thought unreachable: the first answer says it is
        # back (and keeps the holder's registration there from expiring).
        assert record is not None
        self._claim_requests += 1
        self._outputs.append(ClaimRequest(record, renewal=True))
        self._next_renew = now + arbiter.renew

    def _reannounce(self, now: float) -> None:
        for post in self.posts_held():
            self._outputs.append(self._records[post])
        self._last_reannounce = now
        self._next_reannounce = now + self.reannounce_interval

    def _member_came_alive(self, now: float) -> None:
        """A member joined, returned from a partition or refuted a suspicion: a holder tells it
        (and a competing holder it may have) its records now, rather than at the next
        re-announcement, so a healed partition merges within a gossip round. Rate-limited."""
        if not self._holders or self.self_id not in self._holders.values():
            return
        soon = self._last_reannounce + self.conflict_resend_interval
        if now >= soon:
            self._reannounce(now)
        elif self._next_reannounce is None or soon < self._next_reannounce:
            self._next_reannounce = soon

    def _uncount(self, old: Candidate) -> None:
        self._known[old.orchestra] -= 1
        if not self._known[old.orchestra]:
            del self._known[old.orchestra]
        if old.alive:
            self._alive[old.orchestra] -= 1
            if not self._alive[old.orchestra]:
                del self._alive[old.orchestra]

    def _reconcile_changed(self, now: float, old: Candidate | None, new: Candidate | None) -> None:
        """Reconcile the posts one member's change can affect (its orchestras, the conductor)."""
        posts = {CONDUCTOR}
        for c in (old, new):
            if c is not None:
                if c.orchestra in self._known:
                    posts.add(supernode_post(c.orchestra))
                else:
                    self._forget(supernode_post(c.orchestra))
        for post in sorted(posts):
            self._reconcile_post(now, post)
        self._after_reconcile(now)

    def _forget(self, post: str) -> None:
        self._records.pop(post, None)
        self._max_term.pop(post, None)
        self._holders.pop(post, None)
        self._held_terms.pop(post, None)
        self._vacant_since.pop(post, None)
        self._ranks.pop(post, None)
        self._runners_up.pop(post, None)
        self._claim_due.pop(post, None)
        self._retry_at.pop(post, None)
        self._last_resent.pop(post, None)

    def _self_rank(self, post: str) -> int | None:
        """This node's place among the eligible candidates for *post* (0 = best), or None."""
        me = self._candidates.get(self.self_id)
        if me is None or self._leaving or not is_eligible(post, me):
            return None
        mine = candidate_rank(post, me)
        return sum(
            1
            for c in self._candidates.values()
            if is_eligible(post, c) and candidate_rank(post, c) < mine
        )

    def _next_term(self, post: str) -> int:
        # Never beyond what the wire carries: after a record forged at the largest term, a
        # claim at that same term still wins (a valid holder beats an invalid one).
        return min(self._max_term.get(post, 0) + 1, MAX_COUNTER)

    def _claim(self, now: float, post: str) -> None:
        if self.holder(post) is not None:
            return
        claim = Lease(post, self.self_id, self._next_term(post), now)
        if post == CONDUCTOR and self.arbiter is not None and self._arbiter_available:
            # Ask the arbiter; claim when it grants (handle_claim_answer).
            if self._pending is None or now >= self._pending_until:
                self._pending = claim
                self._pending_until = now + self.arbiter.timeout
                self._claim_requests += 1
                self._outputs.append(ClaimRequest(claim, renewal=False))
            self._retry_at[post] = self._pending_until
            return
        self._retry_at.pop(post, None)
        if post == CONDUCTOR:
            self._deferred = False  # the local rule: the arbiter cannot be asked
        self._take(claim)

    def _reconcile(self, now: float) -> None:
        """Bring every post up to date (after the view or the node's own state changed)."""
        posts = {CONDUCTOR, *self._records, *self._holders, *self._vacant_since}
        posts.update(supernode_post(o) for o in self._alive)
        for post in sorted(posts):
            self._reconcile_post(now, post)
        self._after_reconcile(now)

    def _keep_runner_up(self, now: float, record: Lease) -> None:
        """Keep *record*, which lost to the record in force while its holder may hold the
        post, as the post's runner-up (the better of two), with when it was last heard."""
        kept = self._runners_up.get(record.post)
        if kept is None or kept[0] == record or self._pick(kept[0], record) == record:
            self._runners_up[record.post] = (record, now)

    def _reconcile_post(self, now: float, post: str) -> None:
        """Report a change of *post*'s holder, track its vacancy, schedule this node's claim."""
        record = self._records.get(post)
        if record is not None and not self._may_hold(post, record.holder):
            runner_up, heard = self._runners_up.pop(post, (None, -math.inf))
            # A holder re-announces its post every reannounce_interval: a record not heard
            # for two is one its holder no longer asserts (it stepped down).
            fresh = now - heard <= 2 * self.reannounce_interval
            if runner_up is not None and fresh and self._may_hold(post, runner_up.holder):
                # The holder in force is gone, and a live competitor's claim lost to it here
                # before: that claim holds the post now. Dropped, the post looked vacant until
                # the competitor's next re-announcement (up to 3 s), and this node could claim
                # it meanwhile: two holders on one side of a partition (a node that declared
                # the far side's conductor dead 1.7 s after the others, soak at 5 % loss).
                record = self._records[post] = runner_up
                self._adopted += 1
                self._outputs.append(runner_up)
        holder = self.holder(post)
        old = self._holders.get(post)
        if holder != old:
            term = record.term if record is not None else 0
            self._events.append(PostChanged(post, old, holder, term))
            if old == self.self_id:
                if self._leaving:
                    reason = "handoff"
                elif record is not None and record.holder != self.self_id:
                    reason = "conflict"
                elif self._deferred and post == CONDUCTOR:
                    reason = "arbiter"
                else:
                    reason = "ineligible"
                self._step_downs += 1
                term_held = self._held_terms.pop(post, 0)
                self._events.append(SteppedDown(post, term_held, reason, holder))
            if holder is None:
                del self._holders[post]
            else:
                self._holders[post] = holder
        if holder is not None:
            if holder == self.self_id and record is not None:
                self._held_terms[post] = record.term
                if post == CONDUCTOR and self.arbiter is not None and self._next_renew is None:
                    # Holding without the arbiter's word (a handoff, a restart, the local
                    # rule while it was unreachable): confirm with it now.
                    self._next_renew = now
            self._vacant_since.pop(post, None)
            self._ranks.pop(post, None)
            self._claim_due.pop(post, None)
            self._retry_at.pop(post, None)
            return
        orchestra = post_orchestra(post)
        if orchestra is not None and orchestra not in self._alive:
            # Nobody could hold it: no vacancy to time (it starts when a member comes alive).
            self._vacant_since.pop(post, None)
            self._ranks.pop(post, None)
            self._claim_due.pop(post, None)
            return
        since = self._vacant_since.setdefault(post, now)
        rank = self._self_rank(post)
        if rank is None or self._claims_held:
            self._ranks.pop(post, None)
            self._claim_due.pop(post, None)
            return
        # The places behind the best count from when the best would claim: not before the end
        # of the settle period, and not before the best became the best. Counted from the
        # vacancy alone, the places passed meanwhile, and the best candidates claimed at once:
        # at the end of the settle time (a group of nodes started together), or when the
        # better candidates of the far side of a partition were declared dead (every node of
        # this side moved up a place at about the same moment).
        before, fell = self._ranks.get(post, (rank, since))
        if rank < before:
            fell = now
        self._ranks[post] = (rank, fell)
        due = max(since + self.claim_delay, self._settle_until, fell) + rank * self.rank_delay
        self._claim_due[post] = max(due, self._retry_at.get(post, due))

    def _after_reconcile(self, now: float) -> None:
        if self.self_id in self._holders.values():
            if self._next_reannounce is None:
                self._next_reannounce = now + self.reannounce_interval
        else:
            self._next_reannounce = None
