"""The federation's tempo: a pure model of beats over federation time, and its replication.

A :class:`Tempo` maps federation time to musical position (beat, bar, phase) and back. It is
a short list of :class:`TempoSegment` s: each starts at a federation time (``since``) with a
tempo, a meter and the beat and bar counts reached at that instant, so the beat never jumps
when the tempo changes::

    tempo = Tempo.start(bpm=120, meter=4, origin=100.0)   # beat 0 (a downbeat) at t = 100 s
    tempo.at(101.0)            # BeatPosition(beat=2.0, bar=0, beat_in_bar=2.0, ...)
    faster = tempo.change(at=tempo.next_bar(101.0), bpm=150)
    faster.time_at_beat(8.0)   # when beat 8 sounds

:class:`TempoReplica` is the sans-IO core that keeps one node's copy of the conductor's tempo:
only the conductor's publications are obeyed (others are counted and reported), a new conductor
adopts the tempo in force, and the conductor republishes it periodically and whenever a member
joins, so a node that joins late learns it within moments. The trio driver is
:func:`mesh.open_tempo` (:mod:`mesh._tempo_node`).

Errors::

    ValueError
    ├── InvalidTempo     a tempo (or a published one) is out of range or malformed
    └── NotConductor     (RuntimeError too) only the conductor sets the tempo
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs

from mesh._errors import MeshError
from mesh._wire import Value

__all__ = [
    "MAX_BPM",
    "MAX_METER",
    "TEMPO_TOPIC",
    "BeatPosition",
    "InvalidTempo",
    "NotConductor",
    "Tempo",
    "TempoChanged",
    "TempoIgnored",
    "TempoReplica",
    "TempoSegment",
]

TEMPO_TOPIC = "stagemesh.tempo"
"""The publication topic the conductor's tempo travels on."""
MAX_BPM = 999.0
"""Highest tempo (Ableton Link's limit too)."""
MIN_BPM = 1.0
MAX_METER = 64
MAX_SEGMENTS = 4
"""Segments a tempo keeps: the one in force, and changes scheduled after it."""
_MAX_ABS = 1e12


class InvalidTempo(MeshError, ValueError):
    """Raised when a tempo is out of range (bpm outside 1..999, meter outside 1..64, a time or
    count that is not a finite number), or a published tempo is malformed."""


class NotConductor(MeshError, RuntimeError):
    """Raised when a node that is not the federation's conductor (in its own view) tries to
    set the tempo; only the conductor's tempo is obeyed."""


def _finite(value: object, what: str) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or abs(value) > _MAX_ABS
    ):
        raise InvalidTempo(f"{what} must be a finite number, not {value!r}")
    return float(value)


def _check_bpm(bpm: object) -> float:
    bpm = _finite(bpm, "bpm")
    if not MIN_BPM <= bpm <= MAX_BPM:
        raise InvalidTempo(f"bpm must be in {MIN_BPM:g}..{MAX_BPM:g}, not {bpm:g}")
    return bpm


def _check_meter(meter: object) -> int:
    if not isinstance(meter, int) or isinstance(meter, bool) or not 1 <= meter <= MAX_METER:
        raise InvalidTempo(f"meter must be an integer in 1..{MAX_METER}, not {meter!r}")
    return meter


@attrs.frozen
class TempoSegment:
    """From federation time ``since`` on: ``bpm`` beats per minute, ``meter`` beats per bar,
    having reached beat ``beat`` and bar ``bar`` (counts since the origin, fractional) at
    ``since``."""

    since: float
    bpm: float
    meter: int
    beat: float
    bar: float

    def beat_at(self, t: float) -> float:
        """Beats since the origin at federation time *t* (extrapolated at this tempo)."""
        return self.beat + (t - self.since) * self.bpm / 60.0

    def bar_at(self, t: float) -> float:
        """Bars since the origin at *t*: the whole part is the bar, the fraction its phase."""
        return self.bar + (t - self.since) * self.bpm / 60.0 / self.meter


def _whole(x: float) -> int:
    """``floor(x)``, except that a value a rounding error below a whole number counts as that
    number: the time of bar 4's first beat, computed from an origin such as 12.345 s, reads
    back as bar 3.999999999 (and a player would play a beat of a bar the piece does not
    have)."""
    n = math.floor(x)
    return n + 1 if x - n > 1 - 1e-9 else n


@attrs.frozen
class BeatPosition:
    """Where the music is at federation time ``time``."""

    time: float
    beat: float
    """Beats since the origin (continuous across tempo changes; negative before it)."""
    bar: int
    """The bar (0 is the bar that starts at the origin)."""
    beat_in_bar: float
    """Beats into the bar, ``0 <= beat_in_bar < meter`` (0.0 is the downbeat)."""
    phase: float
    """Position within the current beat, ``0 <= phase < 1``."""
    bpm: float
    meter: int


@attrs.frozen
class Tempo:
    """Beats over federation time: the segments in force, oldest first (at most
    :data:`MAX_SEGMENTS`). ``version`` orders tempos across the federation (each new tempo
    the conductor sets has a higher one). Times before the first segment extrapolate it."""

    segments: tuple[TempoSegment, ...]
    version: int = 0

    def __attrs_post_init__(self) -> None:
        if not 1 <= len(self.segments) <= MAX_SEGMENTS:
            raise InvalidTempo(f"a tempo has 1..{MAX_SEGMENTS} segments")
        for seg in self.segments:
            _finite(seg.since, "since")
            _check_bpm(seg.bpm)
            _check_meter(seg.meter)
            _finite(seg.beat, "beat")
            _finite(seg.bar, "bar")
        for a, b in zip(self.segments, self.segments[1:], strict=False):
            if not b.since > a.since:
                raise InvalidTempo("segments must start at increasing times")
        if not 0 <= self.version < 2**53:
            raise InvalidTempo("version must be an integer in 0..2**53")

    @classmethod
    def start(cls, bpm: float, meter: int = 4, origin: float = 0.0, version: int = 0) -> Tempo:
        """A tempo whose beat 0, the downbeat of bar 0, falls at federation time *origin*."""
        return cls((TempoSegment(_finite(origin, "origin"), _check_bpm(bpm),
                                 _check_meter(meter), 0.0, 0.0),), version)  # fmt: skip

    # -- queries ------------------------------------------------------------------------------

    def segment_at(self, t: float) -> TempoSegment:
        """The segment in force at federation time *t*."""
        found = self.segments[0]
        for seg in self.segments[1:]:
            if seg.since <= t:
                found = seg
        return found

    def bpm_at(self, t: float) -> float:
        """The tempo at *t*."""
        return self.segment_at(t).bpm

    def meter_at(self, t: float) -> int:
        """Beats per bar at *t*."""
        return self.segment_at(t).meter

    def beat_at(self, t: float) -> float:
        """Beats since the origin at *t*."""
        return self.segment_at(t).beat_at(t)

    def bar_at(self, t: float) -> float:
        """Bars since the origin at *t* (the fraction is the position in the bar)."""
        return self.segment_at(t).bar_at(t)

    def at(self, t: float) -> BeatPosition:
        """The musical position at federation time *t*."""
        seg = self.segment_at(t)
        bars = seg.bar_at(t)
        bar = _whole(bars)
        in_bar = min(max(0.0, (bars - bar) * seg.meter), math.nextafter(seg.meter, 0))
        beat = seg.beat_at(t)
        return BeatPosition(t, beat, bar, in_bar, beat - math.floor(beat), seg.bpm, seg.meter)

    def time_at_beat(self, beat: float) -> float:
        """The federation time at which beat *beat* (since the origin) falls."""
        chosen = self.segments[0]
        for seg in self.segments[1:]:
            if seg.beat <= beat:
                chosen = seg
        return chosen.since + (beat - chosen.beat) * 60.0 / chosen.bpm

    def time_at_bar(self, bar: float) -> float:
        """The federation time at which bar *bar* starts (a fraction: that far into it)."""
        chosen = self.segments[0]
        for seg in self.segments[1:]:
            if seg.bar <= bar:
                chosen = seg
        return chosen.since + (bar - chosen.bar) * chosen.meter * 60.0 / chosen.bpm

    def next_beat(self, t: float) -> float:
        """The federation time of the first whole beat at or after *t*."""
        return self.time_at_beat(math.ceil(self.beat_at(t) - 1e-9))

    def next_bar(self, t: float) -> float:
        """The federation time of the first downbeat at or after *t*."""
        return self.time_at_bar(math.ceil(self.bar_at(t) - 1e-9))

    def next_change(self, t: float) -> float | None:
        """When the next scheduled segment after *t* starts, if any."""
        return next((s.since for s in self.segments if s.since > t), None)

    # -- changes ------------------------------------------------------------------------------

    def change(self, at: float, *, bpm: float | None = None, meter: int | None = None) -> Tempo:
        """This tempo with a new *bpm* and/or *meter* from federation time *at* on (beats and
        bars stay continuous; change the meter at a bar line, ``at=tempo.next_bar(now)``, for
        the bar count to read naturally). Changes scheduled after *at* are dropped. The
        version goes up by one."""
        at = _finite(at, "at")
        old = self.segment_at(at)
        new = TempoSegment(
            at,
            _check_bpm(old.bpm if bpm is None else bpm),
            _check_meter(old.meter if meter is None else meter),
            old.beat_at(at),
            old.bar_at(at),
        )
        kept = [s for s in self.segments if s.since < at]
        segments = (*kept, new)[-MAX_SEGMENTS:]
        return Tempo(tuple(segments), self.version + 1)

    def pruned(self, now: float) -> Tempo:
        """This tempo without the segments that ended before *now* (same version)."""
        current = self.segment_at(now)
        return attrs.evolve(self, segments=tuple(s for s in self.segments
                                                  if s.since >= current.since))  # fmt: skip

    def with_version(self, version: int) -> Tempo:
        """This tempo with another version number."""
        return attrs.evolve(self, version=version)

    # -- the wire form ------------------------------------------------------------------------

    def to_payload(self) -> dict[str, Value]:
        """The publication payload: ``{"v": version, "s": [[since, bpm, meter, beat, bar]...]}``."""
        return {
            "v": self.version,
            "s": [[s.since, s.bpm, s.meter, s.beat, s.bar] for s in self.segments],
        }

    @classmethod
    def from_payload(cls, payload: Value) -> Tempo:
        """Read a published tempo (it came over the network: every field is checked).
        Raises :class:`InvalidTempo`."""
        if not isinstance(payload, Mapping):
            raise InvalidTempo("a tempo is a map")
        version, raw = payload.get("v"), payload.get("s")
        if not isinstance(version, int) or isinstance(version, bool):
            raise InvalidTempo("a tempo's version is an integer")
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_SEGMENTS:
            raise InvalidTempo(f"a tempo has 1..{MAX_SEGMENTS} segments")
        segments = []
        for item in raw:
            if not isinstance(item, list) or len(item) != 5:
                raise InvalidTempo("a segment is [since, bpm, meter, beat, bar]")
            since, bpm, meter, beat, bar = item
            if not isinstance(meter, int) or isinstance(meter, bool):
                raise InvalidTempo("a segment's meter is an integer")
            segments.append(TempoSegment(
                _finite(since, "since"), _finite(bpm, "bpm"), meter,
                _finite(beat, "beat"), _finite(bar, "bar"),
            ))  # fmt: skip
        return cls(tuple(segments), version)


# -- replication --------------------------------------------------------------------------------


@attrs.frozen
class TempoChanged:
    """The tempo in force on this node changed to ``tempo`` (once known, a tempo stays until a
    newer one replaces it). ``source`` is the publisher's node id."""

    tempo: Tempo
    source: str


@attrs.frozen
class TempoIgnored:
    """A node that is not the conductor (in this node's view) published a tempo; it is not
    obeyed. ``origin`` is its node id, ``origin_path`` its path if known."""

    origin: str
    origin_path: str | None
    version: int


class TempoReplica:
    """One node's copy of the federation's tempo (sans-IO).

    Drive it with :meth:`handle_publication` (every publication on :data:`TEMPO_TOPIC`),
    :meth:`handle_conductor` (the conductor's node id, whenever it may have changed),
    :meth:`handle_join` (a member joined) and :meth:`handle_timer`; set the tempo with
    :meth:`set` (conductor only). Send what :meth:`take_publications` returns on
    :data:`TEMPO_TOPIC`; read :meth:`take_events`. ``now`` is any clock that never goes back
    (the driver uses federation time); *republish* is the period of the conductor's
    republication.
    """

    def __init__(self, me: str, *, republish: float = 2.0, max_publishers: int = 16) -> None:
        self.me = me
        self.republish = republish
        self.max_publishers = max_publishers
        self.current: Tempo | None = None
        """The tempo in force here, or ``None`` until one is known."""
        self.conductor: str | None = None
        self._latest: dict[str, Tempo] = {}  # publisher id -> its newest tempo
        self._source: str | None = None
        self._max_version = -1
        self._outputs: list[dict[str, Value]] = []
        self._events: list[TempoChanged | TempoIgnored] = []
        self._next_publish: float | None = None
        self._urgent = False
        self._last_own_heard = -math.inf
        self.ignored = 0
        self.invalid = 0
        self.published = 0

    # -- inputs -------------------------------------------------------------------------------

    def handle_publication(self, now: float, origin: str, origin_path: str | None,
                           payload: Value) -> None:  # fmt: skip
        """A publication on :data:`TEMPO_TOPIC` from node *origin* (this node included)."""
        try:
            tempo = Tempo.from_payload(payload)
        except InvalidTempo:
            self.invalid += 1
            return
        old = self._latest.get(origin)
        if old is None or tempo.version >= old.version:
            self._latest[origin] = tempo
            if len(self._latest) > self.max_publishers:
                stale = min(
                    (k for k in self._latest if k not in (origin, self.conductor)),
                    key=lambda k: self._latest[k].version,
                )
                del self._latest[stale]
        self._max_version = max(self._max_version, tempo.version)
        if origin == self.me:
            self._last_own_heard = now
        if origin != self.conductor:
            # Reported once this node has heard its conductor's tempo: a node that just joined
            # may know the conductor's publication before its lease (or an old lease first).
            if self.conductor in self._latest:
                self.ignored += 1
                self._events.append(TempoIgnored(origin, origin_path, tempo.version))
            return
        self._follow(origin)

    def handle_conductor(self, now: float, conductor: str | None) -> None:
        """The conductor (a node id, or ``None``) in this node's view, now."""
        if conductor == self.conductor:
            return
        self.conductor = conductor
        if conductor is None:
            return
        if conductor == self.me:
            if self.current is not None:
                # Adopt the tempo in force, so the music goes on through the handover.
                self._adopt(self.current.with_version(self._max_version + 1))
                self._schedule(now)
            return
        self._follow(conductor)

    def handle_join(self, now: float) -> None:
        """A member joined: the conductor tells it the tempo soon."""
        if self.conductor == self.me and self.current is not None:
            self._schedule(now)

    def handle_timer(self, now: float) -> None:
        """Run what is due (the conductor's republication)."""
        due = self._next_publish
        if due is None or now < due:
            return
        if self.conductor != self.me or self.current is None:
            self._next_publish = None
            return
        # Another keeper on this node may republish already: then the periodic one is skipped.
        if self._urgent or now - self._last_own_heard >= self.republish * 0.75:
            self._publish(now)
        self._urgent = False
        self._next_publish = now + self.republish

    def set(self, now: float, tempo: Tempo) -> Tempo:
        """Put *tempo* in force (conductor only; raises :class:`NotConductor`). Its version is
        raised above every version seen, so every node prefers it; returns it as published."""
        if self.conductor != self.me:
            raise NotConductor(
                "only the conductor sets the tempo; this node is not the conductor"
                + ("" if self.conductor is None else " (another node is)")
            )
        tempo = tempo.pruned(now).with_version(max(self._max_version + 1, tempo.version))
        self._adopt(tempo)
        self._publish(now)
        self._urgent = False
        self._next_publish = now + self.republish
        return tempo

    # -- outputs ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` is next due, if ever."""
        return self._next_publish

    def take_publications(self) -> list[dict[str, Value]]:
        """Payloads to publish on :data:`TEMPO_TOPIC`."""
        out, self._outputs = self._outputs, []
        return out

    def take_events(self) -> list[TempoChanged | TempoIgnored]:
        """What changed."""
        out, self._events = self._events, []
        return out

    # -- internals ----------------------------------------------------------------------------

    def _schedule(self, now: float) -> None:
        self._urgent = True
        self._next_publish = now if self._next_publish is None else min(self._next_publish, now)

    def _publish(self, now: float) -> None:
        assert self.current is not None
        tempo = self.current.pruned(now)
        self._outputs.append(tempo.to_payload())
        self.published += 1
        self._last_own_heard = now

    def _adopt(self, tempo: Tempo) -> None:
        self._latest[self.me] = tempo
        self._max_version = max(self._max_version, tempo.version)
        self._set_current(tempo, self.me)

    def _follow(self, publisher: str) -> None:
        tempo = self._latest.get(publisher)
        if tempo is None:
            return
        if self.current is not None and tempo.version < self.current.version:
            return  # an older tempo (a late copy, or a new conductor that never set one)
        self._set_current(tempo, publisher)

    def _set_current(self, tempo: Tempo, source: str) -> None:
        changed = tempo != self.current
        self.current = tempo
        self._source = source
        if changed:
            self._events.append(TempoChanged(tempo, source))
