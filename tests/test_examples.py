"""The examples run as a user would run them (on loopback only)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_metronome(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "concert" / "metronome.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def test_concert_metronome_keeps_players_together() -> None:
    out = run_metronome("--beats", "4")
    spreads = [float(m) for m in re.findall(r"spread ([0-9.]+) ms", out)]
    assert len(spreads) == 4, out
    assert "4 players" in out
    # Every player ticks each beat within a few milliseconds of the others, onsets read on the
    # host's monotonic clock (federation time agrees to well under a millisecond; the rest is
    # scheduling on a busy machine).
    assert max(spreads) < 20.0, out


def test_concert_metronome_keeps_its_tempo_through_a_registry_reset() -> None:
    out = run_metronome("--beats", "8", "--registry")
    assert "the registry was reset" in out, out
    spreads = [float(m) for m in re.findall(r"spread ([0-9.]+) ms", out)]
    periods = [float(m) for m in re.findall(r"period ([0-9.]+) ms", out)]
    assert len(spreads) == 8 and len(periods) == 7, out
    assert max(spreads) < 20.0, out
    # 240 bpm: a beat every 250 ms on the host's clock, before and after the reset (the old
    # registry client ran at half speed for a minute after a reset).
    assert all(abs(p - 250.0) < 10.0 for p in periods), out
