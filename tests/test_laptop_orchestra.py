"""The laptop-orchestra example plays together: real player processes on loopback (one LAN,
two sites through a registry) and a 2012-style federation on the legacy text API."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.registries import running_registry

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "laptop_orchestra"

pytestmark = pytest.mark.slow


def _concert(out: Path, *args: str) -> tuple[dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "concert.py"), "--out", str(out), "--json", *args],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # every player read what it subscribed to: no ready notice was dropped (nor logged so)
    assert "is behind" not in done.stdout + done.stderr, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


def _check_outputs(out: Path, result: dict[str, Any]) -> None:
    for path in result["paths"]:
        _, orchestra, name = path.split("/")
        with wave.open(str(out / f"{orchestra}-{name}.wav"), "rb") as wav:
            assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
            assert wav.getnframes() / wav.getframerate() > 2.0  # the piece, not silence only
            frames = wav.readframes(wav.getnframes())
            assert any(frames[i] for i in range(0, len(frames), 97))  # it holds sound
    assert (out / "spread.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "mix.wav").is_file()


def test_players_with_skewed_drifting_clocks_sound_within_2_ms(tmp_path: Path) -> None:
    """4 players on loopback, clocks from -2 s to +2 s off and drifting +-100 ppm: each
    beat's onsets (on the host's one monotonic clock) lie within 2 ms (p99)."""
    out = tmp_path / "out"
    result, _ = _concert(
        out, "--players", "4", "--bars", "4", "--clock-skew", "2", "--clock-drift", "100"
    )
    assert result["players"] == 4 and result["beats"] == 16, result
    assert result["notes"] == 64 and result["late"] == 0, result
    assert all(row["players"] == 4 for row in result["per_beat"])
    assert result["spread_ms"]["p99"] <= 2.0, result["spread_ms"]
    skews = sorted(json.loads((out / f"{p.split('/')[1]}-{p.split('/')[2]}.json").read_text())
                   ["clock_skew"] for p in result["paths"])  # fmt: skip
    assert skews[0] == -2.0 and skews[-1] == 2.0  # the clocks really were that far apart
    _check_outputs(out, result)


def test_two_sites_play_together_through_the_registry(tmp_path: Path) -> None:
    """Two orchestras whose beacons cannot reach each other, joined by a registry: one
    conductor starts the piece for both, and each beat's spread stays within what the
    players' clocks claim (the sum of the two largest error bounds)."""
    out = tmp_path / "out"
    result, stdout = _concert(
        out, "--players", "4", "--sites", "2", "--bars", "2",
        "--clock-skew", "2", "--clock-drift", "100",
    )  # fmt: skip
    assert "registry ready" in stdout
    assert {p.split("/")[1] for p in result["paths"]} == {"cmu", "colorado"}
    assert result["beats"] == 8 and result["late"] == 0, result
    conductors = [line for line in stdout.splitlines() if "bpm in 4, beat 0 at" in line]
    assert len(conductors) == 1, stdout  # one conductor for both sites
    logs = [json.loads(p.read_text()) for p in out.glob("*.json")]
    for row in result["per_beat"]:
        bounds = sorted(
            o["error_bound"] for log in logs for o in log["onsets"] if o["beat"] == row["beat"]
        )
        assert row["spread"] <= bounds[-1] + bounds[-2], (row, bounds)
    _check_outputs(out, result)


async def test_a_2012_federation_registers_through_the_legacy_api(tmp_path: Path) -> None:
    """Laptops that follow the 2012 document (get-or-create, register, the answer's
    supernode and conductor lines, time from Elapsed) play together on a real registry."""
    out = tmp_path / "out"
    async with running_registry(tmp_path / "registry.db") as url:
        with trio.fail_after(120):
            done = await trio.run_process(
                [
                    *(sys.executable, str(EXAMPLE / "legacy_2012.py"), "--registry", url),
                    *("--laptop", "cmu/rbd:supernode,conductor", "--laptop", "cmu/alice"),
                    *("--laptop", "colorado/bob:supernode", "--laptop", "colorado/carol:conductor"),
                    *("--out", str(out)),
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    text = done.stdout.decode()
    assert done.returncode == 0, text + done.stderr.decode()
    expected = [
        "/cmu/rbd: federation created, id",
        "/cmu/rbd: Registered /cmu/rbd as supernode and conductor in federation sleo",
        "/colorado/bob: Other supernodes: /cmu/rbd at 127.0.0.1",
        "/cmu/alice: Your supernode: /cmu/rbd at 127.0.0.1",
        "/colorado/carol: Your supernode: /colorado/bob at 127.0.0.1",
        "/colorado/carol: Registered /colorado/carol as node in federation sleo, not as "
        "conductor: /cmu/rbd already is the conductor (HTTP 409)",
        "/colorado/carol: Conductor: /cmu/rbd at 127.0.0.1",
        "/colorado/carol: unregistered: OK",
    ]
    for line in expected:
        assert line in text, text
    with trio.fail_after(60):
        gathered = await trio.run_process(
            [sys.executable, str(EXAMPLE / "gather.py"), str(out), "--json"], capture_stdout=True
        )
    result = json.loads(gathered.stdout)
    assert result["players"] == 4 and result["beats"] == 8 and result["late"] == 0
    # each laptop's time is the registry's Elapsed plus half its fastest round trip: two
    # laptops differ by at most the sum of their half round trips
    bounds = sorted(o["error_bound"] for p in out.glob("*.json")
                    for o in json.loads(p.read_text())["onsets"])  # fmt: skip
    assert result["spread_ms"]["max"] / 1000 <= bounds[-1] * 2 + 0.001, (result, bounds)
