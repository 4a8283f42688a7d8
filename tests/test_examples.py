"""The examples run as a user would run them (on loopback only)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_concert_metronome_keeps_players_together() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "concert" / "metronome.py"), "--beats", "4"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    spreads = [float(m) for m in re.findall(r"spread ([0-9.]+) ms", result.stdout)]
    assert len(spreads) == 4, result.stdout
    assert "4 players" in result.stdout
    # Every player ticks each beat within a few milliseconds of the others (federation time
    # agrees to well under a millisecond; the rest is scheduling on a busy machine).
    assert max(spreads) < 20.0, result.stdout
