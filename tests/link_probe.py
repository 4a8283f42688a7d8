"""A Link peer standing in for a DAW, run inside a test's network namespace.

python3 tests/link_probe.py watch --quantum 4 [--every 0.05] [--duration 60]
    prints one JSON line per grid instant T (Link's clock, microseconds, a multiple of
    --every): {"k": T / every, "beat": the session's beat at T, "tempo", "peers"}.
    Link's clock is CLOCK_MONOTONIC_RAW, the same in every namespace of a host, so two
    probes' lines with the same "k" describe the same instant.
python3 tests/link_probe.py set-tempo BPM
    joins, waits (<= 20 s) for a peer, sets the session's tempo (as a DAW user would),
    prints "set PEERS", and leaves once a peer moved the tempo again (or after 10 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import link


def watch(quantum: float, every: float, duration: float) -> None:
    session = link.Link(120.0)
    session.enabled = True
    clock = session.clock()
    step = int(every * 1e6)
    end = time.monotonic() + duration
    k = clock.micros() // step + 1
    while time.monotonic() < end:
        wait = (k * step - clock.micros()) / 1e6
        if wait > 0:
            time.sleep(wait)
        state = session.captureAppSessionState()
        line = {
            "k": k,
            "beat": state.beatAtTime(k * step, quantum),
            "tempo": state.tempo(),
            "peers": session.numPeers(),
        }
        print(json.dumps(line), flush=True)
        k = max(k + 1, clock.micros() // step + 1)
    session.enabled = False


def set_tempo(bpm: float) -> None:
    session = link.Link(bpm)
    session.enabled = True
    deadline = time.monotonic() + 20
    while session.numPeers() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    state = session.captureAppSessionState()
    state.setTempo(bpm, session.clock().micros())
    session.commitAppSessionState(state)
    print("set", session.numPeers(), flush=True)
    # Stay until a peer moved the session off this tempo (a stagemesh node undoes it), or
    # 10 s: leaving at once could take the change away before a loaded peer heard it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and abs(session.captureAppSessionState().tempo() - bpm) < 0.5:
        time.sleep(0.05)
    session.enabled = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("watch")
    w.add_argument("--quantum", type=float, default=4.0)
    w.add_argument("--every", type=float, default=0.05)
    w.add_argument("--duration", type=float, default=60.0)
    s = sub.add_parser("set-tempo")
    s.add_argument("bpm", type=float)
    args = parser.parse_args()
    if args.command == "watch":
        watch(args.quantum, args.every, args.duration)
    else:
        set_tempo(args.bpm)


if __name__ == "__main__":
    sys.exit(main())
