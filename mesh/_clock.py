"""The federation clock: a sans-IO estimator of the time reference's clock, slewed, monotonic.

A node's **local time** is a monotonic reading the driver passes in as ``now`` (``time.monotonic()``
through a :class:`SkewedClock` when skew or drift is injected). Its **federation time** is local
time plus an offset that the :class:`ClockCore` estimates against a **time reference**, the node
the runtime names with :meth:`ClockCore.set_reference` (the conductor, else the longest-serving
supernode). The reference answers :class:`~mesh._wire.ClockRequest` with its own federation time.

How it works (docs/clock.md has the full story):

- **Exchanges.** The core emits ``ClockRequest(probe, t1)`` to the reference: 10/s during the first
  second (or until ``burst_samples`` replies), then less and less often, up to every
  ``max_interval`` seconds. A reply gives the NTP sample ``offset = ((t2 - t1) + (t3 - t4)) / 2``
  at local time ``(t1 + t4) / 2``, round trip ``rtt = (t4 - t1) - (t3 - t2)``, and the
  worst-case error ``rtt / 2 + the reference's own error bound``.
- **Estimate.** A weighted least-squares line (offset and drift) through the lowest-round-trip
  quarter of the last ``history`` samples; early on, or right after a reference change, a
  weighted mean of the samples projected along the previous drift instead. Weights are
  ``1 / rtt**2`` on a quiet network; on a jittery one (judged by the round trips) ``1 / q**2``,
  ``q`` half a sample's round-trip excess over the least round trip (with symmetric jitter,
  what its offset can be off by), and the estimate uses 512 samples instead of 256 (the mean
  the best 128 of them instead of 3 of 16) and polls faster while imprecise; there the rate
  comes from the best sample of each of the last 120 s when that is tighter, and a node
  followed again takes up the samples held when it was left (``ClockConfig.rate_history``).
  Optionally
  (``ClockConfig.holdover``, off) the time the clock kept is a prior that a new reference's
  first estimates are blended with.
- **Slewing.** Federation time never decreases and runs at the local rate within
  ``slew_rate`` (0.4%): a correction is absorbed at most 4 ms per second. The clock steps, only
  forward, on its first sync (``step_on_first_sync``, for a clock used on its own) and when its
  owner says so (:meth:`ClockCore.step`: two clock lineages met, see :mod:`mesh._lineage`).
- **Error bound.** A worst-case bound carried with every estimate: each sample's error bound
  propagated through the estimator (and a worst-case drift interval), plus the unslewed
  correction. It holds as long as the clocks' rates are constant and stay within
  ``max_drift_ppm`` of each other (it does not rely on delays being symmetric). Two bounds are
  kept: ``error_bound`` against the top of the chain of references (a reference's own bound
  included) and ``lan_error_bound`` against the followed node alone, which ``synced`` uses, so
  a site's agreement never depends on how well its reference knows an outside clock.

Drive it h11-style: feed inputs (:meth:`~ClockCore.handle_timer`, :meth:`~ClockCore.handle_reply`,
:meth:`~ClockCore.handle_request`, :meth:`~ClockCore.set_reference`), then send what
:meth:`~ClockCore.take_outputs` returns and sleep until :meth:`~ClockCore.next_deadline`.
All times are seconds as floats; ``now`` is always the node's local time.

Nothing here raises on bad input from the network: an unknown, stale or malformed reply is
counted (``rejected``) and ignored. :class:`ClockCore` and :class:`ClockConfig` raise
``ValueError`` for an invalid configuration.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections import deque

import attrs

from mesh._wire import ClockReply, ClockRequest

__all__ = [
    "MAX_REPORTED_ERROR",
    "ClockConfig",
    "ClockCore",
    "ClockSnapshot",
    "SkewedClock",
]

MAX_REPORTED_ERROR = 1e6
"""What a node puts in a :class:`ClockReply` when its own error bound is unknown (infinite):
the wire carries only finite numbers. Samples this bad carry no weight."""

_MIN_BOUND = 1e-9  # floor of a sample's error bound (keeps the weights finite)
_HISTORIES = 4  # followed nodes whose rate history is kept (the most recent ones)
_FIT_LEAST = 3  # the fit of offset and drift uses at least this many samples
_RTT, _LAN, _FIRST = operator.attrgetter("rtt"), operator.attrgetter("lan"), operator.itemgetter(0)


@attrs.frozen
class SkewedClock:
    """A node's local clock made from a true monotonic reading: skewed and drifting.

    ``local = true + skew_s + (true - origin) * drift_ppm / 1e6``, so a positive ``drift_ppm``
    makes the local clock run fast. The driver of a node started with ``--clock-skew`` and
    ``--clock-drift`` reads ``SkewedClock(skew, drift, origin=time.monotonic())(time.monotonic())``;
    the simulator uses the same mapping with virtual time.
    """

    skew_s: float = 0.0
    drift_ppm: float = 0.0
    origin: float = 0.0

    def __attrs_post_init__(self) -> None:
        if not (math.isfinite(self.skew_s) and math.isfinite(self.origin)):
            raise ValueError("skew and origin must be finite")
        if not (math.isfinite(self.drift_ppm) and abs(self.drift_ppm) < 1e5):
            raise ValueError("drift_ppm must be finite and below 100000 in magnitude")

    def __call__(self, true_now: float) -> float:
        """The local reading at true monotonic time *true_now*."""
        return true_now + self.skew_s + (true_now - self.origin) * self.drift_ppm * 1e-6

    def to_true(self, local: float) -> float:
        """The true monotonic time at which the local clock reads *local* (to sleep until a
        local deadline)."""
        return self.origin + (local - self.skew_s - self.origin) / (1.0 + self.drift_ppm * 1e-6)


def _positive(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attr.name} must be a positive finite number, not {value!r}")


def _non_negative(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attr.name} must be a non-negative finite number, not {value!r}")


def _count(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attr.name} must be at least 1, not {value!r}")


@attrs.frozen
class ClockConfig:
    """The knobs of a :class:`ClockCore`; the defaults suit a LAN and loopback.

    Raises ``ValueError`` when a value is out of range (for example a slew rate of 1 or more,
    which could stop or reverse the clock).
    """

    fast_interval: float = attrs.field(default=0.1, validator=_positive)
    """Seconds between requests during the start burst (10/s)."""
    burst_duration: float = attrs.field(default=1.0, validator=_non_negative)
    """The burst lasts this long after the reference is set ..."""
    burst_samples: int = attrs.field(default=10, validator=_count)
    """... or until this many replies were accepted, whichever comes first."""
    backoff: float = attrs.field(default=0.125, validator=_positive)
    """After the burst the interval is ``backoff`` times the time since the reference was set ..."""
    max_interval: float = attrs.field(default=0.25, validator=_positive)
    """... capped at this many seconds (more samples, and so a better drift estimate, are what
    buy agreement within tens of microseconds) ..."""
    precise: float = attrs.field(default=100e-6, validator=_positive)
    imprecise_interval: float = attrs.field(default=0.05, validator=_positive)
    """... or at most this many seconds while the estimate is likely off by more than
    ``precise`` seconds (a jittery network: more samples, and the best of them, are what
    narrow it; on a quiet LAN the estimate is precise within seconds)."""
    holdover: bool = False
    """After a change of reference, blend the new reference's first estimates with the time
    this clock kept (a prior weighed by its statistical error). It narrows the simulated
    agreement across reference changes, but in the live soak (partitions, elections,
    lineages) it widened the tail, so it is off by default."""
    pairs: bool = True
    """Each poll is a pair of exchanges: the second request goes out as soon as the first is
    answered, while both processes are awake (on a host whose processes sleep between polls,
    the second round trip is several times shorter than the first)."""
    reference_load: float = attrs.field(default=400.0, validator=_positive)
    """... unless the group is large: the cap grows so that the followers of one reference send
    it at most this many requests a second in all (see :meth:`ClockCore.set_group_size`)."""
    reply_timeout: float = attrs.field(default=1.0, validator=_positive)
    """A reply later than this (round trip) is stale and ignored."""
    max_outstanding: int = attrs.field(default=8, validator=_count)
    """Requests awaiting a reply that are remembered (the oldest is forgotten first)."""
    window: int = attrs.field(default=16, validator=_count)
    """The offset is taken from the best of this many most recent samples ..."""
    best: int = attrs.field(default=3, validator=_count)
    """... using this many of them (the lowest-error ones), weighted."""
    history: int = attrs.field(default=256, validator=_count)
    """Samples used for the fit of offset and drift ..."""
    jittery: float = attrs.field(default=400e-6, validator=_positive)
    """... but on a jittery network (the mean of the best ``best`` of the last ``window``
    samples likely off by more than this many seconds, judged by their round trips; quiet
    again below half of it) ..."""
    jittery_history: int = attrs.field(default=512, validator=_count)
    """... both the offset and the fit use this many most recent samples ..."""
    jittery_best: int = attrs.field(default=128, validator=_count)
    """... the offset the best ``jittery_best`` of them (no more than ``fit_fraction``). A
    quiet network keeps the short history: it follows a reference whose rate changes (a site's
    top following an outside clock) more closely, and costs less."""
    rate_history: float = attrs.field(default=120.0, validator=_non_negative)
    """Seconds of a followed node's samples remembered (0: none), for two uses on a jittery
    network, where the estimate's samples span only seconds (``jittery_history`` at
    ``imprecise_interval``) and a rate fitted over them is off by tens of ppm. The best sample
    of each second makes a **rate history**: the estimate takes the rate of a fit over it when
    that is statistically tighter and agrees with its own fit (a follower that becomes the
    reference at a partition keeps that rate, so the time its side keeps stays with the time
    the other side keeps). And the samples held of a node when the clock stops following it
    are **stashed**: following it again within this span (after the partition's heal) takes
    them up again, rather than a new estimate from the first few samples, off by
    milliseconds on such a network."""
    fit_fraction: float = attrs.field(default=0.25, validator=_positive)
    """... which uses this fraction of them with the lowest round trips (at least ``best``)."""
    quality_floor: float = attrs.field(default=0.25, validator=_positive)
    """On a jittery network samples are weighted by ``1 / q**2``, ``q`` half their round
    trip's excess over the least round trip held plus this fraction of half that least round
    trip (on a quiet one by ``1 / bound**2``, a bound about half the round trip: the excess
    weighting doubled the simulated LAN's p99 there, 92 us to 203 us)."""
    min_samples: int = attrs.field(default=4, validator=_count)
    """Samples from the current reference needed before the clock says it is synced (it also
    needs a synced reference and an error bound within ``step_threshold``)."""
    stale_after: float = attrs.field(default=20.0, validator=_positive)
    """Without an accepted sample for this long, the clock no longer says it is synced."""
    max_drift_ppm: float = attrs.field(default=500.0, validator=_positive)
    """The assumed limit on the rate difference of any two clocks (crystals: ~50 ppm)."""
    wander_ppm_per_s: float = attrs.field(default=0.01, validator=_non_negative)
    """How fast an earlier drift interval is widened as it ages (temperature changes)."""
    reference_drift_ppm: float = attrs.field(default=5.0, validator=_non_negative)
    """How much less precise the rate is taken to be after the reference changes (the new
    reference followed the old one, so their rates nearly agree). It decides whether the old
    rate or a fresh fit is used; the error bound does not rely on it."""
    slew_rate: float = attrs.field(default=0.004, validator=_positive)
    """Corrections are absorbed at this fraction of elapsed local time (0.4%: federation time
    runs within 0.5% of real time even with a few hundred ppm of clock drift on top)."""
    fast_slew_rate: float = attrs.field(default=0.004, validator=_positive)
    """The part of a correction beyond ``step_threshold`` is absorbed this fast (by default as
    fast as the rest: large corrections are steps, when lineages meet)."""
    step_threshold: float = attrs.field(default=0.1, validator=_positive)
    """``synced`` needs an error bound within this many seconds."""
    deadband_slew_rate: float = attrs.field(default=0.00002, validator=_positive)
    """With a deadband (see :meth:`ClockCore.set_reference`) the clock moves only as far as
    it must to stay within its estimate's error interval, and this slowly (20 ppm: the nodes
    that follow this one hardly see it, so the site stays together) ..."""
    deadband_rate_change: float = attrs.field(default=0.00001, validator=_positive)
    """... and its rate follows the estimated one by at most this much per second (10 ppm/s:
    a noisy outside clock's rate estimate does not shake the site either)."""

    def __attrs_post_init__(self) -> None:
        if self.slew_rate > self.fast_slew_rate:
            raise ValueError("slew_rate must not exceed fast_slew_rate")
        if self.fast_slew_rate + self.max_drift_ppm * 1e-6 >= 1.0:
            raise ValueError("fast_slew_rate plus max drift must stay below 1 (time must advance)")
        if self.best > self.window or self.window > self.history:
            raise ValueError("need best <= window <= history")
        if self.jittery_best > self.jittery_history:
            raise ValueError("need jittery_best <= jittery_history")


@attrs.frozen
class ClockSnapshot:
    """The state of a node's federation clock at one local instant (``ClockCore.snapshot``).

    ``error_bound`` is a worst-case bound on the difference between ``federation_time`` and the
    reference's (when the reference itself follows another node, its own bound is included, so
    the bound is against the node at the top of the chain); ``math.inf`` when the node has no
    estimate against its current reference. ``drift_ppm`` is how fast the local clock runs
    against federation time (positive: local is fast).
    """

    local_time: float
    federation_time: float
    offset: float
    """``federation_time - local_time``."""
    drift_ppm: float
    drift_bound_ppm: float
    """Worst-case error of ``drift_ppm``."""
    error_bound: float
    lan_error_bound: float
    """Worst-case error against the followed node alone (its own bound left out): what the
    agreement within a site rests on; ``synced`` uses it."""
    reference: str | None
    is_reference: bool
    synced: bool
    samples: int
    """Samples held from the current reference (not counting those carried across a
    hand-over from the previous one)."""
    rtt: float | None
    """The lowest round trip among the recent samples, if any."""
    requests: int
    replies: int
    rejected: int
    steps: int
    resets: int
    """Times the samples contradicted the estimate (a rate change, or the reference's time
    changed) and were discarded."""


@attrs.frozen
class _Sample:
    mid: float  # local time of the measurement (midpoint of t1 and t4)
    offset: float  # federation time minus local time there
    rtt: float
    bound: float  # worst-case |offset error| against the top of the chain of references
    lan: float  # ... against the followed node's time alone
    known: bool = True  # whether the followed node said it was synced, with a known bound
    carried: bool = False  # taken from the previous reference, carried across a hand-over


class ClockCore:
    """The federation clock of one node, as a pure state machine (see the module docstring).

    *now* is the node's local time. *initial_time* is its federation time at *now* before any
    sync: the default 0.0 makes the node's start the federation's epoch, which is what the first
    node of a federation (no registry) wants; a node joining later steps forward to the
    federation's time at its first sync. *is_reference* starts the node as the time reference
    (same as ``set_reference(now, reference_id, is_self=True)``). *reference_id* names itself
    in snapshots. *step_on_first_sync* lets the first estimate (made on ``min_samples``
    samples) step the clock forward (a node joining a federation jumps to its time); without
    it the clock only steps when :meth:`step` says so.
    """

    def __init__(
        self,
        now: float,
        *,
        is_reference: bool = False,
        reference_id: str | None = None,
        initial_time: float = 0.0,
        config: ClockConfig | None = None,
        step_on_first_sync: bool = True,
    ) -> None:
        if not (math.isfinite(now) and math.isfinite(initial_time)):
            raise ValueError("now and initial_time must be finite")
        self._cfg = config if config is not None else ClockConfig()
        self._max_drift = self._cfg.max_drift_ppm * 1e-6
        self._last_now = now
        self._last_fed = -math.inf  # the largest federation time handed out (rounding guard)
        # The estimate: federation time = line(L) - residual(L), line(L) = a_fed + (1+rate)(L-a)
        self._a_local = now
        self._a_fed = initial_time
        self._rate = 0.0
        self._res0 = 0.0
        self._res_at = now
        self._res_floor = 0.0  # the residual stops shrinking here (deadband, see set_reference)
        self._deadband = False
        self._rate_gap = 0.0  # the estimated rate minus the line's (deadband: it lags)
        self._rate_at = now
        # What the line's error bound is made of; None = unknown (infinite). A second estimate
        # (_alt, same anchor) tightens the bound: the truth lies within both.
        self._est: _Bound | None = None
        self._alt: tuple[float, float, _Bound] | None = None  # (federation time at a, rate, bound)
        # While samples carried across a hand-over are held: what the new reference's own
        # samples say of its offset, (local time, lowest, highest) there (see _carried_bound).
        self._carry: tuple[float, float, float] | None = None
        # Drift (the line's rate) as a worst-case interval, widened as it ages.
        self._d_lo = -self._max_drift
        self._d_hi = self._max_drift
        self._d_at = now
        self._rate_err = self._max_drift  # how precise the rate is thought to be (not a bound)
        # Statistics (not bounds): how far the line is likely off at its anchor, the same for
        # the clock as it stood when it became the reference (its holdover), and the clock's
        # time taken over from the previous reference as (local, federation time, sigma),
        # blended with a new reference's first estimates (see _update).
        self._sigma = math.inf
        self._held: tuple[float, float, float] = (now, math.inf, 0.0)  # (at, sigma, rate err)
        self._prior: tuple[float, float, float] | None = None
        self._gap = 0.0  # the line's offset from the estimate its bound describes
        # The last bounds computed, and for which estimate and instant.
        self._bound_key: tuple[object, object, tuple[float, ...]] | None = None
        self._est_cached = math.inf
        self._step_permit = step_on_first_sync  # the estimate may step the clock forward
        self._stepped = 0.0  # stepped since the last take_stepped()
        # Reference and polling.
        self._reference: str | None = None
        self._is_self = False
        self._poll_start = now
        self._next_poll: float | None = None
        self._probe = 0
        self._group_size = 1
        self._outstanding: dict[int, tuple[float, str]] = {}
        self._start_over_on_next_sample = False
        self._pair_first: set[int] = set()  # probes whose answer triggers a second request
        self._outputs: list[tuple[str, ClockRequest]] = []
        # Samples from the current reference.
        # Whether the network is jittery (see ClockConfig.jittery_history): a property of the
        # network, so it is kept across references.
        self._jittery = False
        self._samples: deque[_Sample] = deque(maxlen=self._kept())
        # The best sample of each second, for the last rate_history seconds, per followed node.
        self._history: dict[str, deque[_Sample]] = {}
        # The samples held of each node followed before, as they were when it was left.
        self._stash: dict[str, list[_Sample]] = {}
        self._steady = True  # the followed clock keeps one time under its id (set_reference)
        self._floor_seen = math.inf  # the least round trip of an earlier reference's samples
        self._accepted = 0
        self._ref_synced = False
        self._last_sample_at = -math.inf
        self._ref_bound = math.inf  # the followed node's own bound in its last reply
        # ... and the largest it reported with the samples the estimate was made of (the
        # estimate follows the node's time as it was then, within that node's bound then).
        self._ref_used = 0.0
        self._ref_bound_at = now
        # Some samples held may have been taken while it did not know its time (they are
        # forgotten at its first reply that says it does, see _forget_unknown).
        self._unknown_held = False
        # A hand-over (see set_reference) or a reset of a synced clock: it stays synced from
        # this local time on while it learns the reference again (None: no hand-over) ...
        self._holdover: float | None = None
        # ... on this bound (and when it was given) until the first sample makes an estimate.
        self._held_bound: tuple[float, float] | None = None
        # Counters.
        self._requests = 0
        self._replies = 0
        self._rejected = 0
        self._steps = 0
        self._resets = 0
        if is_reference:
            self.set_reference(now, reference_id, is_self=True)

    # -----------------------------------------------------------------------------------------
    # Inputs

    def set_reference(
        self,
        now: float,
        reference_id: str | None,
        is_self: bool,
        *,
        deadband: bool = False,
        handover: float | None = None,
        steady: bool = True,
    ) -> None:
        """Follow *reference_id* (a node id), or be the reference (*is_self*), or follow no one
        (``None`` and not self: between elections; the clock runs on its last estimate).

        Federation time stays continuous: a node that becomes the reference keeps its current
        federation time and rate; a node that follows a new reference starts a new burst of
        requests and slews to it. Calling it again with the same arguments changes nothing.

        With *deadband* the clock moves only as far as it must to stay within the estimate's
        error interval, at ``deadband_slew_rate`` (a site's reference following the registry:
        an outside clock must not shake the site, whose members follow this node's every
        move).

        With *handover* (seconds) the new reference keeps the same time as the one before (the
        caller knows: one lineage, the old reference synced and this clock synced to it within
        *handover* of the top of its chain): the clock stays synced on that bound, aged by the
        drift, while it learns the new reference (until ``min_samples`` of its samples, or for
        ``stale_after`` at most), so a change of path to the same time never unsyncs it or the
        nodes that follow it. A bound beyond ``step_threshold`` is no hand-over.

        *steady* says that the followed clock keeps one time under its id (a node), so its
        samples may go into its rate history and be taken up again when it is followed again
        (``ClockConfig.rate_history``); not the registry, whose time is an epoch that a reset or
        an empty restart replaces under the same id.
        """
        now = self._tick(now)
        if deadband != self._deadband:
            # The residual goes on from where it is now, at the other speed.
            self._read(now)
            self._res0, self._res_at = self._residual(now), now
            self._deadband = deadband
        if reference_id == self._reference and is_self == self._is_self:
            return
        carry = self._carriable(handover) and not is_self and reference_id is not None
        carried = [attrs.evolve(x, carried=True) for x in self._samples] if carry else []
        previous = self._reference
        keep = self._steady and self._cfg.rate_history > 0.0
        self._steady = steady
        if previous is not None and not self._is_self and keep:
            self._stash.pop(previous, None)
            if len(self._stash) >= _HISTORIES:
                del self._stash[next(iter(self._stash))]
            held = [x for x in self._samples if not x.carried]
            if held and all(map(_straight, held)):
                self._stash[previous] = held
        self._reference = reference_id
        self._is_self = is_self
        self._outstanding.clear()
        self._pair_first.clear()
        self._outputs.clear()  # requests not sent yet were for the old reference
        self._floor_seen = min((s.rtt for s in self._samples), default=self._floor_seen)
        self._samples.clear()
        self._accepted = 0
        self._ref_synced = False
        self._last_sample_at = -math.inf
        self._start_over_on_next_sample = False
        if reference_id is not None or is_self:  # (following no one, the last bound ages on)
            self._ref_bound, self._ref_bound_at = math.inf, now
        prior = self._statistics(now)
        self._prior = None
        if is_self:
            # Freeze the current federation time and rate as the definition of time.
            self._held = (now, prior, self._rate_err)
            fed = self._read(now)
            self._a_local, self._a_fed = now, fed
            self._res0, self._res_at, self._res_floor = 0.0, now, 0.0
            self._rate_gap, self._gap, self._sigma = 0.0, 0.0, 0.0
            self._est, self._alt, self._carry = _EXACT, None, None
            self._rate_err = 0.0  # its rate is the federation's, by definition
            self._next_poll = None
            return
        if reference_id is None:
            # Nobody to follow: run on the last estimate (its bound keeps growing with age).
            self._next_poll = None
            return
        self._start_following(now)
        if handover is not None and handover <= self._cfg.step_threshold:
            self._holdover, self._held_bound = now, (handover, now)
            self._ref_synced = True  # (until the new reference answers for itself)
            self._last_sample_at = now  # staleness counts from the hand-over
            self._ref_bound, self._ref_bound_at = 0.0, now  # (the held bound has it all)
        restored = self._restorable(now, reference_id) if not carried and steady else []
        if restored:
            # Followed before (back after a partition): what its samples said of its time
            # then still holds (a time that changed since contradicts them and starts over,
            # see _consistent), and on a jittery network a new estimate takes many seconds
            # of samples to come within a millisecond.
            self._samples.extend(restored)
        if carried:
            # The new reference keeps the same time (it followed the old one): what this
            # clock learned of that time goes on counting in the estimate, the new
            # reference's samples taking over as they come; the bound rests on them alone
            # (see _carried_bound).
            self._samples = deque(carried, maxlen=self._kept())
        if self._cfg.holdover and math.isfinite(prior):
            # The new reference most likely kept the same time as the old one (or as this
            # clock): the clock's time is where its first estimates are weighed against.
            self._prior = (now, self._read(now), prior)

    def _remember(self, s: _Sample) -> None:
        """Keep *s* in the followed node's rate history if it is the best of its second and
        the followed node defines the time (see :func:`_straight`)."""
        span = self._cfg.rate_history
        if span <= 0.0 or self._reference is None or not _straight(s) or not self._steady:
            return
        kept = self._history.get(self._reference)
        if kept is None:
            if len(self._history) >= _HISTORIES:
                del self._history[next(iter(self._history))]
            kept = self._history[self._reference] = deque()
        if kept and math.floor(kept[-1].mid) == math.floor(s.mid):
            if s.rtt < kept[-1].rtt:
                kept[-1] = s
        else:
            kept.append(s)
        while kept and s.mid - kept[0].mid > span:
            kept.popleft()

    def _restorable(self, now: float, reference_id: str | None) -> list[_Sample]:
        """The samples of *reference_id* held when this clock last left it, if the network
        is jittery and they are younger than ``rate_history`` (its rate history spans them)."""
        stash = self._stash.pop(reference_id, None) if reference_id is not None else None
        if not stash or not self._jittery or now - stash[-1].mid > self._cfg.rate_history:
            return []
        return stash

    def _history_rate(self, fit: _Fit, hint: float) -> float:
        """The rate to estimate with on a jittery network: that of a fit over the followed
        node's rate history (it spans up to ``rate_history`` seconds, where the estimate's
        samples span seconds) when it is tighter than the rate chosen and agrees with the
        estimate's fit, else *hint*. Sets ``_rate_err`` to go with it."""
        kept = self._history.get(self._reference) if self._reference is not None else None
        if kept is None or len(kept) < _FIT_LEAST * 3:
            return hint
        long = _line_fit(kept, self._cfg.quality_floor)
        if long is None:
            return hint
        rate, sigma = long
        if sigma < self._rate_err and abs(rate - fit.rate) <= 4.0 * math.hypot(sigma, fit.sigma):
            self._rate_err = sigma
            return rate
        return hint

    def _carriable(self, handover: float | None) -> bool:
        """Whether a change of reference with *handover* (see :meth:`set_reference`) carries
        the samples held across: the new reference keeps the same time, this clock has an
        estimate of it, and the network is jittery (a new estimate then takes many seconds of
        samples to come within a millisecond; on a quiet one it is as good within one)."""
        return (
            handover is not None
            and handover <= self._cfg.step_threshold
            and self._jittery
            and self._est is not None
            and not self._is_self
            and bool(self._samples)
        )

    def _carried_bound(self, at: float, carry: tuple[float, float, float]) -> float:
        """The line's bound against the new reference while carried samples are held, from
        the new reference's own samples alone: each puts its offset within its bound of
        where it was measured, and the offset moves by at most ``max_drift`` a second since;
        the line is bounded by how far it lies from either end of what they all allow. (The
        carried samples move the line, not the bound: the new reference's time is the old
        one's only within its own error, which this node does not know.)"""
        when, lowest, highest = carry
        widen = self._max_drift * abs(at - when)
        offset = self._line(at) - at
        return max(offset - (lowest - widen), (highest + widen) - offset, 0.0)

    def _statistics(self, now: float) -> float:
        """How far the clock is likely off its reference's time at *now* (a standard
        deviation, not a bound), counting the reference's own likely error as this clock's
        (a new reference followed the same time): ``inf`` when unknown."""
        if self._is_self:
            at, sigma, rate_err = self._held
        else:
            at, sigma, rate_err = self._a_local, self._sigma, self._rate_err
        if self._est is None or not math.isfinite(sigma):
            return math.inf
        return math.sqrt(2.0) * math.hypot(sigma, rate_err * (now - at)) + abs(self._residual(now))

    def _start_following(self, now: float) -> None:
        # Keep the line (continuity) but nothing is known of the new reference yet.
        self._holdover, self._held_bound = None, None
        self._floor_seen = min((s.rtt for s in self._samples), default=self._floor_seen)
        self._samples.clear()
        self._accepted = 0
        self._start_over_on_next_sample = False
        self._est, self._alt, self._carry = None, None, None
        self._prior, self._sigma, self._gap = None, math.inf, 0.0
        # The rate is kept (it is likely still right) but the worst-case interval restarts.
        self._d_lo, self._d_hi, self._d_at = -self._max_drift, self._max_drift, now
        extra = self._cfg.reference_drift_ppm * 1e-6
        self._rate_err = min(self._rate_err + extra, self._max_drift)
        self._poll_start = now
        self._next_poll = now
        self._rate_gap, self._rate_at = 0.0, now  # (a deadband's rate changes slowly from here)

    def take_stepped(self) -> float:
        """Seconds the clock stepped forward since the last call (0.0 if none)."""
        out, self._stepped = self._stepped, 0.0
        return out

    def step(self, now: float, delta: float, *, uncertainty: float = 0.0) -> None:
        """Step federation time forward by *delta* seconds now (an announced step: every node
        of a site applies the same one at the same federation time). The estimate moves with
        it (samples from a reference that stepped at the same moment stay consistent); requests
        in flight are forgotten, as their answers may straddle the step.

        *uncertainty* (seconds) is how far the step may leave the top of the chain from the
        time stepped to (the step goes to another lineage, measured only so well: a site's top
        meeting the registry's lineage, or taking another top's step of a size it did not
        measure). A follower's bound against the top of its chain owns up to it at once: the
        followed node's bound grows by it until that node's next answer says how well it knows
        the new time (its followers would otherwise hold the bound they had against the old
        lineage until then: chaos seed 3547 of the registry sweep, 12.2 ms off with 2.3 ms).
        A reference's own bound is its owner's business (0 here: it defines the time).
        Raises ``ValueError`` for a negative or non-finite *delta* or *uncertainty*."""
        if not (math.isfinite(delta) and delta >= 0.0):
            raise ValueError(f"a step must be forward and finite, not {delta!r}")
        if not (math.isfinite(uncertainty) and uncertainty >= 0.0):
            raise ValueError(f"a step's uncertainty must be finite and >= 0, not {uncertainty!r}")
        now = self._tick(now)
        self._read(now)
        if uncertainty > 0.0 and not self._is_self:
            self._ref_bound = self._ref_part(now) + uncertainty
            self._ref_bound_at = now
            if self._held_bound is not None:  # (a hand-over's held bound has it all)
                held, since = self._held_bound
                aged = held + self._max_drift * max(0.0, now - since)
                self._held_bound = (aged + uncertainty, now)
        self._a_fed += delta
        if self._alt is not None:
            fed, rate, bound = self._alt
            self._alt = (fed + delta, rate, bound)
        if self._prior is not None:
            at, fed, sigma = self._prior
            self._prior = (at, fed + delta, sigma)
        if self._carry is not None:
            at, lowest, highest = self._carry
            self._carry = (at, lowest + delta, highest + delta)
        self._samples = deque(
            (attrs.evolve(x, offset=x.offset + delta) for x in self._samples),
            maxlen=self._kept(),
        )
        for node, kept in self._history.items():
            self._history[node] = deque(attrs.evolve(x, offset=x.offset + delta) for x in kept)
        for node, stash in self._stash.items():
            self._stash[node] = [attrs.evolve(x, offset=x.offset + delta) for x in stash]
        self._outstanding.clear()
        self._pair_first.clear()
        self._steps += 1
        self._stepped += delta

    def reference_restarted(self, now: float) -> None:
        """The followed reference is a new process under the same id (it restarted): what it
        answered before described another process's clock. Its first answer with a known error
        bound starts the estimate over, as with a new reference (no jump; the difference is
        slewed). Until then this node keeps its estimate, which a restarted reference may be
        adopting (:mod:`mesh._lineage`). Nothing happens if this node follows no one or is the
        reference."""
        if not self._is_self and self._reference is not None:
            self._start_over_on_next_sample = True

    def handle_timer(self, now: float) -> None:
        """Send a request to the reference if one is due, forget requests too old to answer."""
        now = self._tick(now)
        limit = now - self._cfg.reply_timeout
        for probe in [p for p, (t1, _) in self._outstanding.items() if t1 < limit]:
            del self._outstanding[probe]
            self._pair_first.discard(probe)
        if self._next_poll is None or now < self._next_poll or self._reference is None:
            return
        self._request(now, self._reference, first_of_pair=self._cfg.pairs)
        self._next_poll = now + self._interval(now)

    def _request(self, now: float, reference: str, first_of_pair: bool) -> None:
        self._probe += 1
        while len(self._outstanding) >= self._cfg.max_outstanding:
            old = next(iter(self._outstanding))
            del self._outstanding[old]
            self._pair_first.discard(old)
        self._outstanding[self._probe] = (now, reference)
        if first_of_pair:
            self._pair_first.add(self._probe)
        self._outputs.append((reference, ClockRequest(self._probe, now)))
        self._requests += 1

    def set_group_size(self, members: int) -> None:
        """Tell the clock how many nodes may follow the same reference (the live members), so
        the steady polling interval keeps the reference's load within ``reference_load``."""
        self._group_size = max(1, members)

    def stamp_request(self, now: float, request: ClockRequest) -> ClockRequest:
        """*request* (one of :meth:`take_outputs`) with ``t1`` moved to *now*, the moment the
        driver sends it, so the node's own work between making and sending the request is not
        counted as network delay on the way out only (that would bias the offset by half of
        it). Anything else is returned unchanged."""
        pending = self._outstanding.get(request.probe)
        if pending is None or pending[0] != request.t1:
            return request
        now = self._tick(now)
        self._outstanding[request.probe] = (now, pending[1])
        return ClockRequest(request.probe, now)

    def stamp_reply(self, now: float, reply: ClockReply) -> ClockReply:
        """*reply* (from :meth:`handle_request`) with ``t3`` moved to this node's federation
        time at *now*, the moment the driver sends it (``t3 - t2`` is then the time spent here,
        which the asker takes out of the round trip)."""
        return attrs.evolve(reply, t3=max(reply.t2, self._read(self._tick(now))))

    def handle_request(self, now: float, request: ClockRequest) -> ClockReply:
        """Answer a peer's request with this node's federation time (any node answers; the
        reply carries its error bound and whether it is synced, and the asker judges)."""
        now = self._tick(now)
        t = self._read(now)
        bound = self._bound(now)
        return ClockReply(
            probe=request.probe,
            t1=request.t1,
            t2=t,
            t3=t,
            error_bound=min(bound, MAX_REPORTED_ERROR),
            synced=self._synced(now),
        )

    def handle_reply(self, now: float, reply: ClockReply, sender: str | None = None) -> bool:
        """Take the reference's answer (received at local time *now*) into the estimate.

        Returns whether it was used. A reply to an unknown or already answered probe, from
        another node than the one asked (when *sender* is given), with a changed ``t1``, older
        than ``reply_timeout`` or with a negative round trip is counted as rejected and ignored.
        """
        now = self._tick(now)
        pending = self._outstanding.get(reply.probe)
        if (
            pending is None
            or self._is_self
            or pending[1] != self._reference
            or (sender is not None and sender != pending[1])
            or reply.t1 != pending[0]
            or now - pending[0] > self._cfg.reply_timeout
            or reply.t3 < reply.t2
        ):
            self._rejected += 1
            return False
        t1, t4 = pending[0], now
        rtt = (t4 - t1) - (reply.t3 - reply.t2)
        if rtt < 0:
            self._rejected += 1
            return False
        del self._outstanding[reply.probe]
        first_of_pair = reply.probe in self._pair_first
        self._pair_first.discard(reply.probe)
        ref_bound = min(reply.error_bound, MAX_REPORTED_ERROR)
        lan = max(rtt / 2 + self._max_drift * (t4 - t1), _MIN_BOUND)
        sample = _Sample(
            mid=(t1 + t4) / 2,
            offset=((reply.t2 - t1) + (reply.t3 - t4)) / 2,
            rtt=rtt,
            bound=lan + ref_bound,
            lan=lan,
            known=reply.synced and ref_bound < MAX_REPORTED_ERROR,
        )
        self._replies += 1
        was_synced = sample.known and self._unknown_held and self._synced(now)
        self._ref_synced = reply.synced
        if ref_bound >= MAX_REPORTED_ERROR and not reply.synced:
            # The reference does not know its own time (a young clock that may yet adopt an
            # older lineage): nothing to learn but that it is there.
            return True
        self._ref_bound = math.inf if ref_bound >= MAX_REPORTED_ERROR else ref_bound
        self._ref_bound_at = now
        if self._start_over_on_next_sample:
            self._history.pop(pending[1], None)  # (another process's clock)
            self._stash.pop(pending[1], None)
            self._start_following(now)
        if sample.known and self._unknown_held:
            self._forget_unknown(now, was_synced)
        if not self._consistent(sample):
            # Samples and estimate cannot both be right: the reference's time or a rate changed.
            # A synced clock stays synced while it learns the reference again (the new
            # estimate's bound says how far off it is; synced still needs it within the step
            # threshold): the reference slewing a correction must not unsync its followers.
            if self._holdover is None and self._synced(now):
                self._holdover = now
            self._resets += 1
            self._samples.clear()
            self._history.pop(pending[1], None)
            self._accepted = 0
            self._d_lo, self._d_hi, self._d_at = -self._max_drift, self._max_drift, now
            self._rate_err = self._max_drift
            self._prior = None
            self._poll_start = now
            self._next_poll = now + self._cfg.fast_interval
        self._samples.append(sample)
        self._remember(sample)
        self._unknown_held |= not sample.known
        self._accepted += 1
        if self._accepted >= self._cfg.min_samples:
            self._holdover = None
        self._held_bound = None  # (an estimate is made of the samples from here on)
        self._last_sample_at = now
        if first_of_pair:
            # Ask again at once, while both processes are awake: the second exchange does not
            # pay for waking either of them, so its round trip (and its error) is much smaller.
            # The estimate is updated when that answer comes (or with the next one).
            self._request(now, pending[1], first_of_pair=False)
            return True
        if self._step_permit and self._accepted < self._cfg.min_samples:
            return True  # step once, on a few samples, rather than on the first and again
        self._update(now)
        return True

    # -----------------------------------------------------------------------------------------
    # Outputs and queries

    def take_outputs(self) -> list[tuple[str, ClockRequest]]:
        """Return and forget the requests to send, as ``(destination node id, request)``."""
        out, self._outputs = self._outputs, []
        return out

    def next_deadline(self) -> float | None:
        """The local time at which :meth:`handle_timer` should next be called (None: never)."""
        return self._next_poll

    def federation_time(self, now: float) -> float:
        """Federation time at local time *now*; never less than an earlier answer."""
        return self._read(self._tick(now))

    @property
    def reference(self) -> str | None:
        """The node id followed (or this node's own id if it is the reference, when known)."""
        return self._reference

    @property
    def is_reference(self) -> bool:
        """Whether this node is the time reference."""
        return self._is_self

    @property
    def max_drift(self) -> float:
        """The assumed limit on any rate difference (``max_drift_ppm`` as a fraction)."""
        return self._max_drift

    def error_bound(self, now: float, *, lan: bool = False) -> float:
        """The error bound at local time *now* (as in :meth:`snapshot`), against the top of
        the chain of references, or with *lan* against the followed node alone."""
        return self._bound(self._tick(now), lan=lan)

    @property
    def estimated(self) -> bool:
        """Whether the clock holds an estimate against its current reference (it is the
        reference, or it has taken enough samples of it)."""
        return self._est is not None

    def snapshot(self, now: float) -> ClockSnapshot:
        """The clock's state at local time *now* as a frozen value (for status and tests)."""
        now = self._tick(now)
        fed = self._read(now)
        recent = self._last(self._cfg.window)
        lo, hi = self._drift_interval(now)
        d = self._rate
        local_per_fed = 1.0 / (1.0 + d) - 1.0
        return ClockSnapshot(
            local_time=now,
            federation_time=fed,
            offset=fed - now,
            drift_ppm=local_per_fed * 1e6,
            drift_bound_ppm=0.0 if self._est is _EXACT else max(d - lo, hi - d, 0.0) * 1e6,
            error_bound=self._bound(now),
            lan_error_bound=self._bound(now, lan=True),
            reference=self._reference,
            is_reference=self._is_self,
            synced=self._synced(now),
            samples=sum(not s.carried for s in self._samples),
            rtt=min((s.rtt for s in recent), default=None),
            requests=self._requests,
            replies=self._replies,
            rejected=self._rejected,
            steps=self._steps,
            resets=self._resets,
        )

    # -----------------------------------------------------------------------------------------
    # Internals

    def _tick(self, now: float) -> float:
        # A driver's clock may not go backwards; if it does, time stands still instead.
        if now > self._last_now:
            self._last_now = now
        return self._last_now

    def _read(self, now: float) -> float:
        # Rounding when the line is re-anchored may cost an ulp; never hand out less than before.
        fed = max(self._fed(now), self._last_fed)
        self._last_fed = fed
        return fed

    def _residual(self, at: float) -> float:
        r = self._res0
        dt = at - self._res_at
        if r == 0.0 or dt <= 0.0:
            return r
        a = abs(r)
        floor = self._res_floor
        if self._deadband:
            return math.copysign(max(floor, a - self._cfg.deadband_slew_rate * dt), r)
        excess = a - max(self._cfg.step_threshold, floor)
        if excess > 0:
            t_fast = excess / self._cfg.fast_slew_rate
            if dt <= t_fast:
                return math.copysign(a - self._cfg.fast_slew_rate * dt, r)
            dt -= t_fast
            a -= excess
        return math.copysign(max(floor, a - self._cfg.slew_rate * dt), r)

    def _line(self, at: float) -> float:
        return self._a_fed + (1.0 + self._rate) * (at - self._a_local)

    def _fed(self, at: float) -> float:
        return self._line(at) - self._residual(at)

    def _est_bound(self, at: float) -> float:
        """The estimate's bound against the followed node's time (cached: snapshots and the
        reply path ask for it often at one instant)."""
        if self._est is None:
            return math.inf
        key = (at, self._a_local, self._a_fed, self._rate)
        cached = self._bound_key
        if not (
            cached is not None
            and cached[0] is self._est
            and cached[1] is self._alt
            and cached[2] == key
        ):
            bound = (
                self._est.at(at)
                + abs(self._rate_gap * (at - self._a_local))
                + abs(self._gap)
            )
            if self._alt is not None:
                fed, rate, alt = self._alt
                gap = abs(fed + (1.0 + rate) * (at - self._a_local) - self._line(at))
                bound = min(bound, alt.at(at) + gap)
            if self._carry is not None:  # (the estimate's own bound counts carried samples)
                bound = self._carried_bound(at, self._carry)
            self._bound_key = (self._est, self._alt, key)
            self._est_cached = bound
        return self._est_cached

    def _ref_part(self, at: float) -> float:
        """The followed node's own bound (against the top of its chain), grown by the drift
        since its last reply: the largest it reported in that reply or with the samples held
        (its time may have moved within a larger bound since the samples were taken, and the
        estimate follows its time as it was then). Once it knows its time, the samples held
        are all from replies that said so (see :meth:`_forget_unknown`)."""
        if self._is_self:
            return 0.0
        bound = max(self._ref_bound, self._ref_used)
        return bound + self._max_drift * max(0.0, at - self._ref_bound_at)

    def _bound(self, at: float, lan: bool = False) -> float:
        if self._est is None and self._held_bound is not None:
            held, since = self._held_bound
            return held + self._max_drift * max(0.0, at - since)
        bound = self._est_bound(at) + abs(self._residual(at))
        return bound if lan else bound + self._ref_part(at)

    def _synced(self, now: float) -> bool:
        if self._is_self:
            return True
        held = self._holdover is not None and now - self._holdover <= self._cfg.stale_after
        if self._reference is None or (self._est is None and not held):
            return False
        return (
            self._ref_synced
            and (self._accepted >= self._cfg.min_samples or held)
            and now - self._last_sample_at <= self._cfg.stale_after
            and self._bound(now, lan=True) <= self._cfg.step_threshold
        )

    def _interval(self, now: float) -> float:
        cfg = self._cfg
        elapsed = now - self._poll_start
        if elapsed < cfg.burst_duration and self._accepted < cfg.burst_samples:
            return cfg.fast_interval
        per_poll = 2 if cfg.pairs else 1
        # (While carried samples are held, the new reference's own samples make the bound.)
        imprecise = self._jittery and (self._sigma > cfg.precise or self._carry is not None)
        steady = cfg.imprecise_interval if imprecise else cfg.max_interval
        cap = max(steady, per_poll * self._group_size / cfg.reference_load)
        return min(cap, max(cfg.fast_interval, cfg.backoff * elapsed))

    def _drift_interval(self, now: float) -> tuple[float, float]:
        widen = self._cfg.wander_ppm_per_s * 1e-6 * max(0.0, now - self._d_at)
        return (max(self._d_lo - widen, -self._max_drift), min(self._d_hi + widen, self._max_drift))

    def _widen_drift(self, now: float) -> None:
        self._d_lo, self._d_hi = self._drift_interval(now)
        self._d_at = now

    def _consistent(self, s: _Sample) -> bool:
        if self._est is None or self._est is _EXACT:
            return True
        predicted = self._line(s.mid) - s.mid
        # The reference's own bound covers its moves (it slews what it has not yet absorbed);
        # a move beyond step_threshold is a change of its time, not noise.
        step = self._cfg.step_threshold
        tolerance = min(s.bound, s.lan + step)
        estimate = self._est_bound(s.mid) + min(self._ref_part(s.mid), step)
        return abs(s.offset - predicted) <= tolerance + estimate + 1e-9

    def _forget_unknown(self, now: float, was_synced: bool) -> None:
        """The followed node says it knows its time (synced, with a bound it knows): forget
        the samples taken while it did not (it was not synced, or it was a site's top whose
        bound against the outside clock was unknown). Its time then was not yet its chain's
        (it slewed or stepped since, within the bound it gave): an estimate made of them
        follows a time it has left, and counting their bounds would hold the follower's bound
        up (at up to ``MAX_REPORTED_ERROR``) for as long as they are held, hundreds of samples.
        The drift learned with them is forgotten too, and the follower polls fast to learn the
        reference anew; a follower that *was_synced* stays synced meanwhile (a hold-over, as
        when its samples contradict its estimate), its bound saying how good it is."""
        kept = [s for s in self._samples if s.known]
        self._unknown_held = False
        if len(kept) == len(self._samples):
            return
        if was_synced and self._holdover is None:
            self._holdover = now
        self._samples = deque(kept, maxlen=self._kept())
        self._accepted = min(self._accepted, len(kept))
        self._d_lo, self._d_hi, self._d_at = -self._max_drift, self._max_drift, now
        self._rate_err = self._max_drift
        self._prior = None
        self._poll_start = now
        self._next_poll = now + self._cfg.fast_interval

    def _kept(self) -> int:
        """How many samples are held: as many as the estimate uses on this network."""
        return self._cfg.jittery_history if self._jittery else self._cfg.history

    def _used(self) -> list[_Sample]:
        """The most recent samples the fit uses (more of them on a jittery network)."""
        return self._last(self._cfg.jittery_history if self._jittery else self._cfg.history)

    def _last(self, n: int) -> list[_Sample]:
        """The last *n* samples held (without copying the rest)."""
        held = self._samples
        return list(itertools.islice(held, max(0, len(held) - n), None))

    def _rtt_floor(self) -> float:
        """The least round trip among the samples held, or seen from an earlier reference
        (the network's floor: a new reference's first few samples are judged against it)."""
        floor = min(min(map(_RTT, self._samples), default=math.inf), self._floor_seen)
        return floor if math.isfinite(floor) else 0.0

    def _quality(self, s: _Sample, floor: float) -> float:
        """How far a sample's offset is likely off (a statistical scale, not a bound): half
        its round trip's excess over the floor, plus a share of the floor (the floor's own
        asymmetry and timestamping noise). With symmetric jitter a sample's offset error is
        at most half its queueing, so the samples nearest the floor count most (NTP's clock
        filter, Huygens' coded probes), whatever the floor itself."""
        return (s.rtt - floor) / 2 + self._cfg.quality_floor * floor / 2 + _MIN_BOUND

    def _fit(self, now: float, floor: float) -> _Fit | None:
        """Weighted least squares of offset against time over the lowest-error samples
        (*floor*: the least round trip, see :meth:`_rtt_floor`)."""
        cfg = self._cfg
        used = self._used()
        keep = max(_FIT_LEAST, math.ceil(len(used) * cfg.fit_fraction))
        pts = sorted(used, key=_LAN)[:keep]
        if len(pts) < 2:
            return None
        mul = operator.mul
        share = cfg.quality_floor * floor / 2  # (as in _quality)
        lans = [s.lan for s in pts]
        if self._jittery:
            qs = [(s.rtt - floor) / 2 + share + _MIN_BOUND for s in pts]
        else:
            qs = lans
        ws = [1.0 / (q * q) for q in qs]
        mids = [s.mid for s in pts]
        offsets = [s.offset for s in pts]
        wsum = sum(ws)
        mbar = sum(map(mul, ws, mids)) / wsum
        ds = [m - mbar for m in mids]
        sxx = sum([w * d * d for w, d in zip(ws, ds, strict=True)])
        if sxx <= 0.0:
            return None
        cs = [w * d / sxx for w, d in zip(ws, ds, strict=True)]
        ahead = now - mbar
        hs = [w / wsum + c * ahead for w, c in zip(ws, cs, strict=True)]
        rate = sum(map(mul, cs, offsets))
        rate_error = sum([abs(c) * b for c, b in zip(cs, lans, strict=True)])
        # The statistical error of the rate, from the residuals when there are enough of them.
        sigma = rate_error
        if len(pts) >= 8:
            obar = sum(map(mul, ws, offsets)) / wsum
            k = sum(
                [w * (o - obar - rate * d) ** 2 for w, o, d in zip(ws, offsets, ds, strict=True)]
            ) / (len(pts) - 2)
            sigma = min(math.sqrt(k / sxx), rate_error)
        return _Fit(
            rate=rate,
            rate_error=rate_error,
            sigma=sigma,
            offset=sum(map(mul, hs, offsets)),
            # A sample off by at most q either way: uniform, variance q**2 / 3.
            offset_sigma=math.sqrt(sum([(h * q) ** 2 for h, q in zip(hs, qs, strict=True)]) / 3),
            bound=_Bound(
                now, 0.0, [(h, c, m, b, 0.0) for h, c, m, b in zip(hs, cs, mids, lans, strict=True)]
            ),
        )

    def _fresh_interval(self, now: float) -> tuple[float, float, float] | None:
        """Where the current reference's own samples put its offset at *now*: (now, lowest,
        highest); None if they allow nothing (or there are none)."""
        lowest, highest = -math.inf, math.inf
        for s in self._samples:
            if not s.carried:
                widen = s.lan + self._max_drift * abs(now - s.mid)
                lowest, highest = max(lowest, s.offset - widen), min(highest, s.offset + widen)
        return (now, lowest, highest) if lowest <= highest else None

    def _judge_network(self, floor: float) -> None:
        """Whether the network is jittery (see ``ClockConfig.jittery``). Round trips alone
        decide, so the judgement does not feed on the estimate it chooses."""
        cfg = self._cfg
        recent = self._last(cfg.window)
        qs = sorted(self._quality(s, floor) for s in recent)[: cfg.best]
        # Weights 1 / q**2, each sample off by up to q (uniform): the weighted mean's sigma.
        sigma = 1.0 / math.sqrt(3.0 * sum(1.0 / (q * q) for q in qs))
        jittery = sigma > cfg.jittery or (self._jittery and sigma >= cfg.jittery / 2)
        if jittery != self._jittery:
            self._jittery = jittery
            self._samples = deque(self._samples, maxlen=self._kept())

    def _update(self, now: float) -> None:
        cfg = self._cfg
        floor = self._rtt_floor()
        self._carry = None
        if any(s.carried for s in self._samples):
            self._carry = self._fresh_interval(now)
            if self._carry is None:  # the two references' times disagree: start over
                self._samples = deque(
                    (s for s in self._samples if not s.carried), maxlen=self._kept()
                )
        self._judge_network(floor)
        self._ref_used = max(
            (s.bound - s.lan for s in self._samples if not s.carried), default=0.0
        )
        # 1. Drift: intersect the aged worst-case interval with the fit's; take the fit's rate
        #    unless it is statistically vaguer than the current rate and agrees with it.
        self._widen_drift(now)
        lo, hi = self._d_lo, self._d_hi
        hint = self._rate
        fit = self._fit(now, floor)
        if fit is not None and abs(fit.rate) > self._max_drift + fit.rate_error:
            # Not a clock rate: the reference's time is not running straight (it is slewing a
            # large correction itself; its error bound says so). Take nothing from the fit.
            fit = None
        if fit is not None:
            f_lo, f_hi = fit.rate - fit.rate_error, fit.rate + fit.rate_error
            n_lo, n_hi = max(lo, f_lo), min(hi, f_hi)
            if n_lo > n_hi:  # the old interval was wrong: trust the data
                n_lo, n_hi = max(f_lo, -self._max_drift), min(f_hi, self._max_drift)
            disagree = abs(fit.rate - self._rate) > 4.0 * math.hypot(fit.sigma, self._rate_err)
            if fit.sigma <= 1.25 * self._rate_err or disagree:
                hint = fit.rate
                self._rate_err = fit.sigma
            lo, hi = n_lo, n_hi
            if self._jittery:
                hint = self._history_rate(fit, hint)
        self._d_lo, self._d_hi = lo, hi
        hint = min(max(hint, -self._max_drift), self._max_drift)
        rate = min(max(hint, lo), hi)
        u = max(rate - lo, hi - rate)
        # 2. Offset, two ways: (a) the fitted line (best once the samples span a long time),
        #    (b) a weighted mean of the best recent samples projected to now along the drift
        #    estimate (best early, and after a reference change, when the old rate is better
        #    known than the fit's). The fit is used when it was also the better drift source.
        recent = self._used() if self._jittery else self._last(cfg.window)
        # (Chosen and weighted by how precise the rate is thought to be; bounded honestly.)
        err = max(self._rate_err, 1e-9)
        if self._jittery:
            q0 = self._quality(_Sample(now, 0.0, 0.0, 0.0, 0.0), floor)  # (q0 + rtt / 2)
            scored = sorted(
                ((q0 + s.rtt / 2 + err * (now - s.mid), s) for s in recent), key=_FIRST
            )
        else:
            scored = sorted(((s.lan + err * (now - s.mid), s) for s in recent), key=_FIRST)
        share = max(_FIT_LEAST, math.ceil(len(recent) * cfg.fit_fraction))  # as in the fit
        chosen = scored[: min(cfg.jittery_best if self._jittery else cfg.best, share)]
        weights = [1.0 / (score * score) for score, _ in chosen]
        wsum = sum(weights)
        offset = 0.0
        variance = 0.0
        terms: list[tuple[float, float, float, float, float]] = []
        for w, (score, s) in zip(weights, chosen, strict=True):
            offset += w / wsum * (s.offset + rate * (now - s.mid))
            variance += (w / wsum * score) ** 2 / 3
            terms.append((w / wsum, 0.0, s.mid, s.lan, w / wsum))
        mean = (now + offset, rate, _Bound(now, u, terms))
        current = self._fed(now)
        previous_rate = self._rate
        self._a_local = now
        if fit is not None and hint == fit.rate:
            self._a_fed, self._rate, self._est = now + fit.offset, fit.rate, fit.bound
            self._alt = mean
            self._sigma = fit.offset_sigma
        else:
            self._a_fed, self._rate, self._est = mean
            self._alt = None if fit is None else (now + fit.offset, fit.rate, fit.bound)
            self._sigma = math.sqrt(variance)
        self._gap = 0.0
        if self._prior is not None:
            # Holdover: the time this clock kept (from the previous reference) and the new
            # estimate, each weighed by how likely it is right; the prior fades as samples
            # come, and is dropped if the two disagree (the new reference keeps other time).
            at, fed, sigma_p = self._prior
            prior = fed + (1.0 + self._rate) * (now - at)
            sigma_p = math.hypot(sigma_p, self._rate_err * (now - at))
            keep = sigma_p * sigma_p + self._sigma * self._sigma
            if abs(prior - self._a_fed) > 4.0 * math.sqrt(keep) or sigma_p > 100 * self._sigma:
                self._prior = None
            else:
                alpha = self._sigma * self._sigma / keep
                self._gap = alpha * (prior - self._a_fed)
                self._a_fed += self._gap
                self._sigma = math.sqrt(alpha) * sigma_p
        self._rate_gap = 0.0
        if self._deadband:
            # The line's rate follows the estimate's slowly; the bound owns up to the gap.
            limit = cfg.deadband_rate_change * max(0.0, now - self._rate_at)
            used = previous_rate + min(max(self._rate - previous_rate, -limit), limit)
            self._rate_gap, self._rate = self._rate - used, used
        self._rate_at = now
        # 3. The line is re-anchored at now: keep federation time continuous via the residual.
        r = self._a_fed - current
        if r > 0 and self._step_permit:
            step = r - self._est_bound(now)  # never past the estimate's lower edge
            if step > 0:
                r -= step
                self._steps += 1
                self._stepped += step
        self._step_permit = False
        self._res0, self._res_at = r, now
        # With a deadband, what lies within the estimate's error interval is not corrected.
        noise = self._est_bound(now)
        self._res_floor = min(abs(r), noise) if self._deadband else 0.0


def _straight(s: _Sample) -> bool:
    """Whether *s* was answered by a node that defines the time (synced, with a bound of 0: a
    reference at the top of its chain, whose time runs straight at the rate it froze). A node
    that follows another clock slews towards each new estimate of it (a site's top tracking
    the registry), so its time is a straight line only over seconds, and neither a line
    through minutes of its samples nor its samples from before a partition describe it."""
    return s.known and s.bound <= s.lan


def _line_fit(samples: deque[_Sample], quality_floor: float) -> tuple[float, float] | None:
    """The rate (slope of offset against local time) of a weighted least-squares line through
    *samples* and its standard error from the residuals, weights as on a jittery network (see
    ``ClockConfig.quality_floor``); None if they do not span any time."""
    floor = min(map(_RTT, samples))
    share = quality_floor * floor / 2
    ws = [1.0 / ((s.rtt - floor) / 2 + share + _MIN_BOUND) ** 2 for s in samples]
    wsum = sum(ws)
    mbar = sum(w * s.mid for w, s in zip(ws, samples, strict=True)) / wsum
    obar = sum(w * s.offset for w, s in zip(ws, samples, strict=True)) / wsum
    sxx = sum(w * (s.mid - mbar) ** 2 for w, s in zip(ws, samples, strict=True))
    if sxx <= 0.0:
        return None
    rate = sum(w * (s.mid - mbar) * s.offset for w, s in zip(ws, samples, strict=True)) / sxx
    k = sum(
        w * (s.offset - obar - rate * (s.mid - mbar)) ** 2
        for w, s in zip(ws, samples, strict=True)
    ) / max(1, len(samples) - 2)
    return rate, math.sqrt(k / sxx)


class _AbsSum:
    """``sum(a * abs(x - r))`` over pairs ``(a, r)``, for any ``x`` in O(log n): the ``r``
    sorted, with prefix sums (an estimate's bound is asked for at many instants)."""

    __slots__ = ("_a", "_ar", "_rs")

    def __init__(self, pairs: list[tuple[float, float]]) -> None:
        pairs.sort(key=lambda p: p[1])
        self._rs = [r for _, r in pairs]
        self._a = list(itertools.accumulate((a for a, _ in pairs), initial=0.0))
        self._ar = list(itertools.accumulate((a * r for a, r in pairs), initial=0.0))

    def at(self, x: float) -> float:
        k = bisect.bisect_right(self._rs, x)
        a, ar = self._a, self._ar
        below = x * a[k] - ar[k]
        above = (ar[-1] - ar[k]) - x * (a[-1] - a[k])
        return max(0.0, below + above)


class _Bound:
    """The worst-case error bound of an estimate anchored at local time ``anchor``: the sum
    over its samples of ``|h + g * (L - anchor)| * bound + w * u * |L - mid|`` at local time
    ``L`` (each sample's bound against the followed node's time; the followed node's own bound
    is added at the end), ``u`` the drift uncertainty. No samples: exact."""

    __slots__ = ("_ages", "_anchor", "_const", "_lines", "_u")

    def __init__(
        self, anchor: float, u: float, terms: list[tuple[float, float, float, float, float]]
    ) -> None:
        # terms: (h, g, mid, bound, w). |h + g*x| * b = |g| * b * |x - (-h / g)|.
        self._anchor, self._u = anchor, u
        self._const = sum(abs(h) * b for h, g, _, b, _ in terms if g == 0.0)
        self._lines = _AbsSum([(abs(g) * b, -h / g) for h, g, _, b, _ in terms if g != 0.0])
        self._ages = _AbsSum([(w, mid - anchor) for _, _, mid, _, w in terms if w != 0.0])

    def at(self, at: float) -> float:
        x = at - self._anchor
        return self._const + self._lines.at(x) + self._u * self._ages.at(x)


_EXACT = _Bound(0.0, 0.0, [])


@attrs.frozen
class _Fit:
    rate: float
    rate_error: float  # worst case
    sigma: float  # statistical
    offset: float  # at the time the fit was made for
    offset_sigma: float  # statistical
    bound: _Bound
