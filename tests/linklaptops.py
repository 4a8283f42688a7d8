"""Two "laptops" for the Ableton Link tests and bench: network namespaces on one bridge that
carries gossip but no multicast, so each laptop has its own Link session (Link finds peers by
multicast). Each runs ``stagemesh node --link`` (the first as conductor, with ``--osc`` so the
test can set the tempo as a patch would) with a skewed, drifting clock, and a Link peer that
stands in for a DAW (``tests/link_probe.py watch``).

    with Laptops(tmp_path) as laptops:
        laptops.wait_synced()
        laptops.osc(0, "/stagemesh/tempo/start", 120.0, 4)
        laptops.wait_tempo(120.0)
        diffs = laptops.phase_differences(seconds=5)   # seconds, one per common instant
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.netns import Host, Lan, Spawned

__all__ = ["Laptops", "phase_difference"]

ROOT = Path(__file__).resolve().parent.parent
PROBE = str(ROOT / "tests" / "link_probe.py")
OSC_PORT = 9000
METER = 4
CLOCKS = [("1.5", "100"), ("-1.2", "-100")]


def phase_difference(beat_a: float, beat_b: float, bpm: float, quantum: float) -> float:
    """Seconds between two sessions' phases (beats modulo the quantum), wrapped to the
    nearest."""
    beats = (beat_a - beat_b + quantum / 2) % quantum - quantum / 2
    return beats * 60.0 / bpm


class Laptops:
    """Two laptops with a node and a DAW stand-in each (see the module docstring)."""

    def __init__(self, tmp: Path, probe_seconds: float = 300.0) -> None:
        self.tmp = tmp
        self.probe_seconds = probe_seconds
        self.lan = Lan(2)
        self.nodes: list[Spawned] = []
        self.urls: list[str] = []
        self.probes: list[Spawned] = []
        self.samples: list[dict[int, dict[str, Any]]] = [{}, {}]

    def __enter__(self) -> Laptops:
        lan = self.lan.__enter__()
        try:
            lan.keep_multicast_local()
            for host in lan.hosts:
                self._start_node(host)
            for host in lan.hosts:
                watch = ["watch", "--quantum", str(METER), "--duration", str(self.probe_seconds)]
                self.probes.append(lan.spawn(host, sys.executable, PROBE, *watch))
        except BaseException:
            lan.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for proc in self.nodes:
            proc.stop()
        self.lan.__exit__(exc_type, exc, tb)

    def _start_node(self, host: Host) -> None:
        skew, drift = CLOCKS[host.index]
        flags = ["--conductor", "--osc", f"127.0.0.1:{OSC_PORT}"] if host.index == 0 else [
            "--seed", f"{self.lan.hosts[0].address}:7471"]  # fmt: skip
        proc = self.lan.spawn(
            host,
            *(sys.executable, "-m", "mesh", "node", "--bind", "0.0.0.0", "--no-mdns"),
            *("--orchestra", "o1", "--name", f"h{host.index}"),
            *("--state-dir", str(self.tmp / f"state{host.index}")),
            *("--clock-skew", skew, "--clock-drift", drift, "--link", *flags),
            env={**_environ(), "STAGEMESH_RUNTIME_DIR": str(self.tmp / f"run{host.index}")},
        )
        line = proc.wait_for(lambda text: text.startswith("ready "), timeout=30)
        self.nodes.append(proc)
        self.urls.append(dict(p.split("=", 1) for p in line.split()[1:])["status"])

    # -- reading and driving ----------------------------------------------------------------

    def status(self, index: int) -> dict[str, Any]:
        """Laptop *index*'s node status (read with ``stagemesh status`` in its namespace)."""
        host = self.lan.hosts[index]
        out = self.lan.run(host, sys.executable, "-m", "mesh", "status", self.urls[index],
                           "--json").stdout  # fmt: skip
        doc: dict[str, Any] = json.loads(out)
        return doc

    def osc(self, index: int, address: str, *args: Any) -> None:
        """Send one OSC message to laptop *index*'s bridge from inside its namespace."""
        code = (
            "import sys, json; from pythonosc.udp_client import SimpleUDPClient; "
            f"SimpleUDPClient('127.0.0.1', {OSC_PORT}).send_message(sys.argv[1], "
            "json.loads(sys.argv[2]))"
        )
        self.lan.run(self.lan.hosts[index], sys.executable, "-c", code, address,
                     json.dumps(list(args)))  # fmt: skip

    def daw_sets_tempo(self, index: int, bpm: float) -> None:
        """A DAW user on laptop *index* changes the Link session's tempo."""
        out = self.lan.run(
            self.lan.hosts[index], sys.executable, PROBE, "set-tempo", str(bpm), timeout=60
        )
        assert out.stdout.startswith("set ") and int(out.stdout.split()[1]) >= 1, out.stdout

    def wait_synced(self, timeout: float = 60.0) -> None:
        """Until laptop 1 follows the conductor (laptop 0) and its clock is synced."""
        _until(lambda: self._synced(), timeout, "laptop 1 synced to the conductor")

    def _synced(self) -> bool:
        doc = self.status(1)
        clock = doc["clock"]
        return bool(
            doc["conductor"] == "/o1/h0"
            and clock["synced"]
            and (clock["error_bound"] or 1.0) < 0.002
        )

    def read(self, index: int, until: float) -> None:
        """Collect laptop *index*'s probe lines until ``time.monotonic()`` reaches *until*."""
        probe = self.probes[index]
        while time.monotonic() < until:
            try:
                line = probe.wait_for(lambda text: text.startswith("{"),
                                      max(0.01, until - time.monotonic()))  # fmt: skip
            except TimeoutError:
                return
            sample = json.loads(line)
            self.samples[index][sample["k"]] = sample

    def latest(self, index: int) -> dict[str, Any]:
        """The probe's newest sample (reading what has arrived, up to 2 s)."""
        self.read(index, time.monotonic() + 0.2)
        assert self.samples[index], "the probe printed nothing"
        return self.samples[index][max(self.samples[index])]

    def wait_tempo(self, bpm: float, timeout: float = 30.0) -> float:
        """Until both DAW stand-ins play *bpm* with the node as a peer; the seconds it took."""

        def both() -> bool:
            return all(
                abs(s["tempo"] - bpm) < 0.01 and s["peers"] >= 1
                for s in (self.latest(0), self.latest(1))
            )

        return _until(both, timeout, f"both Link sessions at {bpm} bpm")

    def phase_differences(self, seconds: float) -> list[float]:
        """Phase differences (seconds) between the two sessions at every common grid instant
        of the next *seconds* seconds."""
        start = max(max(self.samples[0], default=0), max(self.samples[1], default=0))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for index in (0, 1):
                self.read(index, min(end, time.monotonic() + 0.25))
        common = sorted(set(self.samples[0]) & set(self.samples[1]))
        out = []
        for k in common:
            if k <= start:
                continue
            a, b = self.samples[0][k], self.samples[1][k]
            if abs(a["tempo"] - b["tempo"]) > 0.01:
                continue  # one session mid-change; not a phase figure
            out.append(phase_difference(a["beat"], b["beat"], a["tempo"], METER))
        return out


def _until(check: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.2)  # polling other processes under a deadline
    raise AssertionError(f"{what} not reached within {timeout} s")


def _environ() -> dict[str, str]:
    return dict(os.environ)
