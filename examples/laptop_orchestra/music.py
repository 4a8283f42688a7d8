"""What the laptop-orchestra scripts share: the onset log, the spread, the synthesiser.

Pure standard library (``wave``, ``array``, ``math``, ``json``): no numpy, no audio device.

An **onset log** is one JSON file per player, ``<orchestra>-<name>.json``::

    {"path": "/cmu/ada", "bpm": 120.0, "meter": 4, "origin": 12.0, "note": 60,
     "host_epoch": 5234.1, "wav": "cmu-ada.wav",
     "onsets": [{"beat": 0, "bar": 0, "federation_time": 12.0, "host": 5235.1, "late": false,
                 "error_bound": 0.0002}, ...]}

``host`` is the onset on the host's monotonic clock (``time.monotonic()``, one clock for every
process of a machine), so the onsets of players on one host can be compared: their spread per
beat shows whether the players' clocks agree, whatever each player's own clock says.
"""

from __future__ import annotations

import array
import json
import math
import wave
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "SAMPLE_RATE",
    "percentile",
    "read_logs",
    "render_wav",
    "spread_by_beat",
    "write_log",
]

SAMPLE_RATE = 22050
NOTE_SECONDS = 0.35


def write_log(folder: Path, doc: dict[str, Any]) -> Path:
    """Write one player's onset log (named after its path) and return its file."""
    _, orchestra, name = doc["path"].split("/")
    path = folder / f"{orchestra}-{name}.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


def read_logs(folder: Path) -> list[dict[str, Any]]:
    """Every onset log in *folder* (sorted by path)."""
    logs = []
    for path in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            continue  # being written

        if isinstance(doc, dict) and "onsets" in doc and "path" in doc:
            logs.append(doc)
    return sorted(logs, key=lambda d: d["path"])


def spread_by_beat(logs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per beat played by at least two players: ``beat``, ``bar``, ``players``, ``spread``
    (seconds between the earliest and the latest onset on the host clock) and
    ``federation_time`` (when the beat was due)."""
    beats: dict[int, list[tuple[float, dict[str, Any]]]] = {}
    for log in logs:
        for onset in log["onsets"]:
            beats.setdefault(int(onset["beat"]), []).append((float(onset["host"]), onset))
    rows = []
    for beat in sorted(beats):
        hosts = [h for h, _ in beats[beat]]
        if len(hosts) < 2:
            continue
        first = beats[beat][0][1]
        rows.append(
            {
                "beat": beat,
                "bar": first["bar"],
                "players": len(hosts),
                "spread": max(hosts) - min(hosts),
                "federation_time": first["federation_time"],
            }
        )
    return rows


def percentile(values: Iterable[float], q: float) -> float:
    """The *q*-th percentile (0-100) by nearest rank; ``nan`` for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _note(samples: array.array[int], start: int, midi: int, gain: float) -> None:
    frequency = 440.0 * 2 ** ((midi - 69) / 12)
    length = int(NOTE_SECONDS * SAMPLE_RATE)
    step = 2 * math.pi * frequency / SAMPLE_RATE
    attack = int(0.004 * SAMPLE_RATE)
    for i in range(max(0, -start), min(length, len(samples) - start)):
        envelope = min(1.0, i / attack) * math.exp(-9.0 * i / SAMPLE_RATE)
        # a plucked tone: the fundamental and a softer octave
        value = math.sin(step * i) + 0.3 * math.sin(2 * step * i)
        mixed = samples[start + i] + int(gain * envelope * value * 32767 / 1.3)
        samples[start + i] = max(-32768, min(32767, mixed))


def render_wav(
    path: Path, onsets: Sequence[dict[str, Any]], epoch: float, midi: int, meter: int
) -> None:
    """Render the notes of *onsets* to a mono 16-bit WAV whose first sample is the host
    instant *epoch*: each note starts at its onset's ``host`` time (a louder note an octave
    up on each downbeat)."""
    end = max((o["host"] for o in onsets), default=epoch) - epoch + NOTE_SECONDS + 0.2
    samples = array.array("h", bytes(2 * int(max(end, 0.5) * SAMPLE_RATE)))
    for onset in onsets:
        start = round((onset["host"] - epoch) * SAMPLE_RATE)
        downbeat = int(onset["beat"]) % meter == 0
        _note(samples, start, midi + (12 if downbeat else 0), 0.7 if downbeat else 0.45)
    _write(path, samples)


def _write(path: Path, samples: array.array[int]) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(samples.tobytes())


def mix_wavs(logs: Sequence[dict[str, Any]], folder: Path, path: Path) -> bool:
    """Mix the players' WAVs into one, each placed at its ``host_epoch`` (so the mix sounds
    as the players played, on one host's clock); returns whether there was anything to
    mix."""
    tracks = []
    for log in logs:
        wav = folder / log.get("wav", "")
        if log.get("wav") and wav.is_file():
            with wave.open(str(wav), "rb") as f:
                frames = array.array("h", f.readframes(f.getnframes()))
            tracks.append((float(log["host_epoch"]), frames))
    if not tracks:
        return False
    start = min(e for e, _ in tracks)
    length = max(round((e - start) * SAMPLE_RATE) + len(t) for e, t in tracks)
    total = [0] * length
    for epoch, frames in tracks:
        offset = round((epoch - start) * SAMPLE_RATE)
        for i, value in enumerate(frames):
            total[offset + i] += value
    peak = max(1, max(abs(v) for v in total))
    scale = min(1.0, 32767 / peak)
    _write(path, array.array("h", (int(v * scale) for v in total)))
    return True
