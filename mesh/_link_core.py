"""What the Ableton Link bridge does with the local Link session, decided without I/O.

Each step the driver reads, at one instant, Link's clock (microseconds), federation time, and
the session's tempo and beat there (Link's ``beatAtTime`` with the quantum :meth:`LinkAligner.
quantum` gives); :meth:`LinkAligner.step` answers what to commit:

- nothing, while the session follows the conductor's tempo and its phase is within
  ``tolerance`` of the conductor's beat;
- an :class:`Align` (``setTempo`` + ``forceBeatAtTime``) when the conductor's tempo changed,
  at the first step, or when the phase drifted (Link's clock and the federation's differ by a
  few ppm) - the Link beat is ``bar * meter`` so that Link's phase (beat modulo the quantum, the
  meter) is the position in the conductor's bar;
- an :class:`Align` marked ``foreign`` when someone else in the session changed its tempo: a
  laptop's Link session is not where the tempo is decided (only the conductor sets it), so the
  change is reported and undone.
"""

from __future__ import annotations

import attrs

from mesh._tempo import Tempo

__all__ = ["Align", "LinkAligner"]


@attrs.frozen
class Align:
    """Commit ``bpm`` and map ``beat`` to Link time ``time_us`` with ``quantum``."""

    bpm: float
    beat: float
    time_us: int
    quantum: float
    reason: str
    """``start``, ``tempo`` (the conductor's tempo changed), ``phase`` (drift corrected) or
    ``foreign`` (someone else changed the session's tempo: reported, not obeyed)."""
    foreign_bpm: float | None = None
    """The tempo someone else set, for ``foreign``."""


class LinkAligner:
    """Keeps one Link session on the conductor's tempo and beat (sans-IO).

    *tolerance* is the phase error (seconds) left alone; *tempo_tolerance* (bpm) absorbs Link's
    rounding of a tempo to whole microseconds per beat.
    """

    def __init__(self, tolerance: float = 0.0002, tempo_tolerance: float = 0.001) -> None:
        self.tolerance = tolerance
        self.tempo_tolerance = tempo_tolerance
        self.committed_bpm: float | None = None
        self.last_error: float | None = None
        """The phase error (seconds, session minus conductor) at the last step."""
        self.counts: dict[str, int] = {}

    @staticmethod
    def quantum(tempo: Tempo, federation_time: float) -> float:
        """The quantum to read the session's beat with: the meter in force."""
        return float(tempo.meter_at(federation_time))

    @staticmethod
    def target(tempo: Tempo, federation_time: float) -> float:
        """The Link beat of the conductor's position at *federation_time*."""
        return tempo.bar_at(federation_time) * tempo.meter_at(federation_time)

    def step(
        self,
        time_us: int,
        federation_time: float,
        tempo: Tempo | None,
        session_bpm: float,
        session_beat: float,
    ) -> Align | None:
        """Decide, for a reading taken at Link time *time_us* = *federation_time*."""
        if tempo is None:
            return None
        bpm = tempo.bpm_at(federation_time)
        quantum = self.quantum(tempo, federation_time)
        target = self.target(tempo, federation_time)
        error_beats = (session_beat - target + quantum / 2) % quantum - quantum / 2
        self.last_error = error_beats * 60.0 / bpm
        reason: str | None = None
        foreign: float | None = None
        if self.committed_bpm is None:
            reason = "start"
        elif abs(session_bpm - bpm) > self.tempo_tolerance:
            if abs(session_bpm - self.committed_bpm) > self.tempo_tolerance:
                reason, foreign = "foreign", session_bpm
            else:
                reason = "tempo"
        elif abs(self.last_error) > self.tolerance:
            reason = "phase"
        if reason is None:
            return None
        self.committed_bpm = bpm
        self.counts[reason] = self.counts.get(reason, 0) + 1
        return Align(bpm, target, time_us, quantum, reason, foreign)
