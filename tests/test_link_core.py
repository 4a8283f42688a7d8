"""The Link bridge's decisions driven by hand: a session that reads what the last commit set
(a timeline the test keeps), with the conductor's tempo changing and a DAW meddling."""

from __future__ import annotations

import pytest

from mesh._link_core import Align, LinkAligner
from mesh._tempo import Tempo


class Session:
    """A Link session's timeline: beat = beat0 + (t - t0) * bpm / 60e6 (t in microseconds)."""

    def __init__(self, bpm: float = 120.0) -> None:
        self.bpm, self.t0, self.beat0 = bpm, 0, 0.0

    def beat(self, t_us: int) -> float:
        return self.beat0 + (t_us - self.t0) * self.bpm / 60e6

    def commit(self, action: Align) -> None:
        self.bpm, self.t0, self.beat0 = action.bpm, action.time_us, action.beat


def step(
    aligner: LinkAligner, session: Session, t_us: int, fed: float, tempo: Tempo
) -> Align | None:
    action = aligner.step(t_us, fed, tempo, session.bpm, session.beat(t_us))
    if action is not None:
        session.commit(action)
    return action


def test_the_session_is_aligned_once_then_left_alone_while_in_phase() -> None:
    aligner, session = LinkAligner(tolerance=0.0002), Session(bpm=97.0)
    tempo = Tempo.start(120, meter=4, origin=10.0)  # federation time = Link time + 10 s here
    first = step(aligner, session, 20_000_000, 30.0, tempo)
    assert first is not None and first.reason == "start" and first.quantum == 4.0
    assert first.bpm == 120 and first.beat == pytest.approx(40.0)  # bar 10 * meter 4
    assert step(aligner, session, 21_000_000, 31.0, tempo) is None
    assert aligner.last_error == pytest.approx(0.0, abs=1e-9)


def test_drift_beyond_the_tolerance_is_corrected() -> None:
    aligner, session = LinkAligner(tolerance=0.0002), Session()
    tempo = Tempo.start(120, origin=0.0)
    step(aligner, session, 0, 0.0, tempo)
    # Federation time runs 100 ppm faster than Link's clock: 0.1 ms behind after 1 s.
    assert step(aligner, session, 1_000_000, 1.0001, tempo) is None
    action = step(aligner, session, 3_000_000, 3.0003, tempo)
    assert action is not None and action.reason == "phase"
    assert aligner.last_error == pytest.approx(-0.0003, abs=1e-6)


def test_a_conductors_tempo_change_is_followed_and_a_daws_is_reported_and_undone() -> None:
    aligner, session = LinkAligner(), Session()
    tempo = Tempo.start(120, origin=0.0)
    step(aligner, session, 0, 0.0, tempo)
    faster = tempo.change(2.0, bpm=150)
    action = step(aligner, session, 2_000_000, 2.0, faster)
    assert action is not None and action.reason == "tempo" and action.bpm == 150
    session.bpm = 70.0  # a DAW on this laptop moves the session's tempo
    action = step(aligner, session, 3_000_000, 3.0, faster)
    assert action is not None and action.reason == "foreign" and action.foreign_bpm == 70.0
    assert session.bpm == 150 and aligner.counts == {"start": 1, "tempo": 1, "foreign": 1}


def test_the_phase_error_wraps_within_the_quantum() -> None:
    aligner = LinkAligner()
    tempo = Tempo.start(60, meter=3, origin=0.0)
    aligner.step(0, 0.0, tempo, 60.0, 0.0)
    # The session's beat is 2.9999 while the conductor's is 3.0 (= 0.0 modulo 3): 0.1 ms early.
    assert aligner.step(3_000_000, 3.0, tempo, 60.0, 2.9999) is None
    assert aligner.last_error == pytest.approx(-0.0001, abs=1e-9)
    assert aligner.step(3_000_000, 3.0, None, 60.0, 0.0) is None  # no tempo: left alone
