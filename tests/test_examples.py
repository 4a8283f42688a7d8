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


def test_conference_demo_runs_a_station_under_its_own_state_folder(tmp_path: Path) -> None:
    """The conference example as its README runs it: a conductor and a station on loopback,
    keys made with stagemesh keygen, a signed push; stand-ins instead of ffmpeg and rsync;
    everything written under the state folder it is given, nothing under /srv."""
    station_file = (ROOT / "examples" / "conference" / "station.json").read_text()
    assert "/srv" not in station_file
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "conference" / "demo.py"),
         "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "/room-a/cam1: applied" in out
    assert "stand-in: would run: ffmpeg" in out
    data = tmp_path / "state" / "conference" / "room-a" / "cam1" / "roles" / "data"
    assert f"recordings go under {data}" in out
    assert (data / "recordings" / "room-a").is_dir()
    assert {p.name for p in tmp_path.iterdir()} >= {"federation.key", "operator.key", "state"}
