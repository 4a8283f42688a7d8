"""A 2012-style federation: laptops that know only the registry's legacy text API.

    python3 examples/laptop_orchestra/legacy_2012.py --registry http://127.0.0.1:7480 \\
        --laptop cmu/rbd:supernode,conductor --laptop cmu/alice \\
        --laptop colorado/bob:supernode --laptop colorado/carol --out legacy-out

Each laptop (a thread here; a program of 2012 on its own machine then) follows the 2012
document step by step, with plain HTTP GETs (``urllib``, as a 2012 client would):

1. ``federation?federation=F``: the federation's id, ``-1`` if it does not exist yet, then
   ``federation?federation=F&create=yes`` to create it; the same for the orchestra;
2. ``register?federation=F&orchestra=O&name=N&supernode=yes|no&conductor=yes|no&port=P``;
   from the answer's lines: ``Your supernode:`` and the next line (field 3 the supernode's
   path, field 4 its IP) for a node, which would connect to it; ``Other supernodes:`` for a
   supernode; ``Conductor:``; ``Elapsed:``, the seconds since the federation's first
   registration, "used to estimate the global federation time";
3. the clock: it registers again ten times and keeps the offset of the fastest round trip
   (``elapsed + rtt / 2`` at the arrival of the answer), as the CMU servers of the time did;
4. it plays ``--bars`` bars at ``--bpm`` from elapsed time ``--start``, logging each onset
   on the host clock like the stagemesh players (``gather.py`` reads both), and unregisters.

Supernodes register first (a node registered before its supernode gets no supernode and
"waits for the supernode to contact it").
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from music import render_wav, write_log

NOTES = (55, 59, 62, 67, 71, 74)


class Laptop:
    """One 2012 client: its registry, names, flags and what it learned."""

    def __init__(self, registry: str, federation: str, spec: str, port: int) -> None:
        where, _, flags = spec.partition(":")
        self.orchestra, _, self.name = where.partition("/")
        self.supernode = "supernode" in flags.split(",")
        self.conductor = "conductor" in flags.split(",")
        self.registry = registry.rstrip("/")
        self.federation = federation
        self.port = port
        self.offset: float | None = None
        """Federation (elapsed) time minus this host's monotonic clock."""
        self.rtt = float("inf")
        self.lines: list[str] = []

    @property
    def path(self) -> str:
        return f"/{self.orchestra}/{self.name}"

    def get(self, url: str, **params: str) -> tuple[int, str, float]:
        """GET ``url?params``: status, text and the host time the answer arrived."""
        query = urllib.parse.urlencode({"federation": self.federation, **params})
        try:
            with urllib.request.urlopen(f"{self.registry}/{url}?{query}", timeout=10) as r:
                return r.status, r.read().decode(), time.monotonic()
        except urllib.error.HTTPError as exc:  # 409 and 400 carry a text answer too
            return exc.code, exc.read().decode(), time.monotonic()

    def say(self, text: str) -> None:
        self.lines.append(text)
        print(f"{self.path}: {text}", flush=True)

    def ensure(self, what: str, **params: str) -> None:
        """The 2012 get-or-create of a federation or an orchestra."""
        _, text, _ = self.get(what, **params)
        if text.strip() == "-1":
            _, text, _ = self.get(what, **params, create="yes")
            self.say(f"{what} created, id {text.strip()}")
        else:
            self.say(f"{what} exists, id {text.strip()}")

    def register(self) -> tuple[int, str]:
        """One ``register`` call; keeps the offset if its round trip is the fastest yet."""
        sent = time.monotonic()
        status, text, arrived = self.get(
            "register",
            orchestra=self.orchestra,
            name=self.name,
            supernode="yes" if self.supernode else "no",
            conductor="yes" if self.conductor else "no",
            port=str(self.port),
        )
        for line in text.splitlines():
            if line.startswith("Elapsed:") and arrived - sent < self.rtt:
                self.rtt = arrived - sent
                self.offset = float(line.split()[1]) + self.rtt / 2 - arrived
        return status, text

    def join(self) -> None:
        """Steps 1 and 2 of the 2012 flow, saying what the answer means."""
        self.ensure("federation")
        self.ensure("orchestra", orchestra=self.orchestra)
        status, text = self.register()
        lines = text.splitlines()
        self.say(lines[0] + (f" (HTTP {status})" if status != 200 else ""))
        for header in ("Your supernode:", "Other supernodes:", "Conductor:"):
            if header not in lines:
                continue
            entries = []
            for line in lines[lines.index(header) + 1 :]:
                fields = line.split()
                if line.endswith(":") or len(fields) < 4:
                    break
                entries.append(f"{fields[2]} at {fields[3]}")  # field 3: path, field 4: IP
            self.say(f"{header} {', '.join(entries) or 'none'}")
        if not self.supernode and "Your supernode:" not in lines:
            self.say("no supernode yet: waits for its supernode to contact it")

    def sync_clock(self, rounds: int = 10) -> None:
        """Step 3: more registrations, the fastest round trip's offset."""
        for _ in range(rounds):
            self.register()
        self.say(f"clock from the fastest of {rounds + 1} round trips: {self.rtt * 1000:.2f} ms")

    def play(self, args: argparse.Namespace, note: int, out: Path) -> None:
        """Step 4: the piece on the estimated federation time; the onset log and WAV."""
        assert self.offset is not None
        period = 60.0 / args.bpm
        onsets: list[dict[str, Any]] = []
        for beat in range(args.bars * args.meter):
            due = args.start + beat * period
            onset = due - self.offset  # this laptop's host time for that federation time
            wait = onset - args.forward_delay - time.monotonic()
            if wait < -args.forward_delay:
                continue  # the beat is gone
            time.sleep(max(0.0, wait))
            onsets.append(
                {
                    "beat": beat,
                    "bar": beat // args.meter,
                    "federation_time": due,
                    "host": max(onset, time.monotonic()),
                    "late": onset < time.monotonic(),
                    "error_bound": self.rtt / 2,
                }
            )
        wav = f"{self.orchestra}-{self.name}.wav"
        epoch = args.host_epoch if args.host_epoch is not None else args.start - self.offset
        render_wav(out / wav, onsets, epoch, note, args.meter)
        write_log(
            out,
            {
                "path": self.path, "bpm": args.bpm, "meter": args.meter, "origin": args.start,
                "note": note, "host_epoch": epoch, "wav": wav, "onsets": onsets,
                "late": sum(1 for o in onsets if o["late"]), "legacy": True,
            },
        )  # fmt: skip
        self.say(f"played {len(onsets)} notes")

    def leave(self) -> None:
        """Unregister (a 2012 client did so when it shut down)."""
        _, text, _ = self.get("unregister", orchestra=self.orchestra, name=self.name)
        self.say(f"unregistered: {text.strip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--registry", required=True, help="the registry's URL")
    add("--federation", default="sleo")
    add("--laptop", action="append", required=True,
        help="ORCHESTRA/NAME[:supernode][,conductor] (repeatable)")  # fmt: skip
    add("--bars", type=int, default=2)
    add("--bpm", type=float, default=120.0)
    add("--meter", type=int, default=4)
    add("--start", type=float, default=4.0, help="elapsed time of beat 0")
    add("--forward-delay", type=float, default=0.1)
    add("--host-epoch", type=float, default=None, help="host monotonic time of sample 0")
    add("--out", type=Path, default=Path("legacy-out"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    laptops = [Laptop(args.registry, args.federation, spec, 7471 + i)
               for i, spec in enumerate(args.laptop)]  # fmt: skip
    # 2012: a supernode registers first, so its nodes find it in their answers
    for laptop in sorted(laptops, key=lambda la: not la.supernode):
        laptop.join()
    threads = [threading.Thread(target=la.sync_clock) for la in laptops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    threads = [
        threading.Thread(target=la.play, args=(args, NOTES[i % len(NOTES)], args.out))
        for i, la in enumerate(laptops)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for laptop in laptops:
        laptop.leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
