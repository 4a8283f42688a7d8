"""The Ableton Link bridge with real Link peers (linkpython-extern), in network namespaces this
test made: two laptops whose multicast stays local, so each has its own Link session; their
nodes (``--link``, clocks skewed by +1.5 s / -1.2 s and drifting +-100 ppm) gossip over the
bridge. A DAW stand-in on each laptop reads its session (``tests/link_probe.py``)."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.linklaptops import Laptops, phase_difference

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def test_both_link_sessions_follow_the_conductors_tempo_in_phase(tmp_path: Path) -> None:
    with Laptops(tmp_path) as laptops:
        laptops.wait_synced()
        laptops.osc(0, "/stagemesh/tempo/start", 120.0, 4)
        laptops.wait_tempo(120.0)
        diffs = laptops.phase_differences(seconds=3)
        assert len(diffs) >= 30
        # The figures (p50/p99 over 60 s) come from bench/link.py; this bound allows for load.
        assert statistics.median(abs(d) for d in diffs) < 0.002, diffs
        # The conductor changes the tempo: every laptop's session follows, still in phase.
        laptops.osc(0, "/stagemesh/tempo/set", 93.5)
        laptops.wait_tempo(93.5)
        diffs = laptops.phase_differences(seconds=3)
        assert len(diffs) >= 30
        assert statistics.median(abs(d) for d in diffs) < 0.002, diffs
        status = laptops.status(1)["link"]
        assert status["peers"] >= 1 and status["conductor_bpm"] == 93.5
        assert status["alignments"]["tempo"] >= 1


def test_a_tempo_change_in_a_laptops_session_is_reported_not_obeyed(tmp_path: Path) -> None:
    with Laptops(tmp_path) as laptops:
        laptops.wait_synced()
        laptops.osc(0, "/stagemesh/tempo/start", 110.0, 4)
        laptops.wait_tempo(110.0)
        laptops.daw_sets_tempo(1, 70.0)  # a DAW user on laptop 1, which is not the conductor

        def reported() -> bool:
            return bool(laptops.status(1)["link"]["foreign_tempo_changes"] >= 1)

        from tests.linklaptops import _until

        _until(reported, 20, "the foreign tempo change reported")
        link = laptops.status(1)["link"]
        assert link["last_foreign"]["bpm"] == pytest.approx(70.0)
        laptops.wait_tempo(110.0)  # undone on laptop 1; laptop 0 never left it
        assert all(abs(s["tempo"] - 70.0) > 1 for s in laptops.samples[0].values())
        assert laptops.status(0)["link"]["foreign_tempo_changes"] == 0


def test_phase_difference_wraps_to_the_nearest_beat() -> None:
    assert phase_difference(3.999, 0.001, 120.0, 4) == pytest.approx(-0.001)
    assert phase_difference(8.25, 0.25, 60.0, 4) == pytest.approx(0.0)


def test_link_without_the_extra_is_a_one_line_usage_error() -> None:
    code = (
        "import sys; sys.modules['link'] = None; "  # as if linkpython-extern were not installed
        "from mesh.__main__ import main; "
        "sys.exit(main(['node', '--bind', '127.0.0.1', '--link']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: --link needs Ableton Link support: pip install 'stagemesh[link]'"]
