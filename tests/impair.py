"""Network impairment in user space: a hub that forwards Ethernet frames between namespaces
and loses, delays, reorders and duplicates them on the way, as ``tc netem`` would.

Why: the kernel this project is tested on has no ``sch_netem`` (``CONFIG_NET_SCH_NETEM`` is not
set, and modules cannot be loaded), so ``tc qdisc add ... netem`` answers "Specified qdisc kind
is unknown". The hub replaces it as a real network element: every frame a host sends (ARP,
broadcast, mDNS, UDP, TCP) crosses it, so the nodes under test run their real sockets over a
bad network.

Layout (made by :class:`tests.netns.Lan` with ``impair=Link(...)``)::

    host h0 (namespace)      hub namespace                          host h1 (namespace)
    eth0 10.77.0.1 = TAP t0 <-> hub process: learn, impair, queue <-> TAP t1 = eth0 10.77.0.2
                                                ...

The hub process runs in its own namespace and creates one TAP device per host (``t0``, ``t1``,
...); the harness moves each into its host's namespace and names it ``eth0``. A TAP device
hands the hub whole frames with their checksums already computed (no offloads are enabled on
it), which a veth read with ``AF_PACKET`` would not (checksum offload leaves partial checksums
that the far host then drops). The devices belong to the hub's file descriptors: when the hub
ends, every host's ``eth0`` disappears with it, so nothing can outlive a run.

What the hub does with a frame received on port *s*:

1. **Switching**: it learns the source MAC address's port; a frame to a known unicast address
   goes to that port only, a broadcast, multicast or unknown one to every other port.
2. **Per destination port *d***, independently: dropped if *s* or *d* is down
   (:meth:`Hub.down`, "unplug the cable") or if they are on different sides of a partition
   (:meth:`Hub.partition`); otherwise the :class:`Link` rule of the pair ``(s, d)`` (else the
   default rule) decides, in netem's order: loss; duplication (a second copy, impaired on its
   own); for each copy, the queue limit of that direction, then the delay
   ``delay +- jitter`` (uniform), or none with probability ``reorder`` (netem's ``reorder``),
   after a serialisation time at ``rate`` bits/s if a rate is set. Jitter alone reorders
   frames, as netem's does; the hub counts every frame that leaves before one received earlier
   on the same direction (``reordered``).
3. Frames wait in one time-ordered queue and are written to the destination TAP when due.

Rules are per direction and per host pair, so sites are easy::

    with Lan(6, impair=Link()) as lan:          # a hub with no impairment
        site_a, site_b = [0, 1, 2], [3, 4, 5]
        lan.hub.set_link(site_a, site_b, Link(delay=0.2, loss=0.02))   # both ways
        lan.hub.set_link(site_a, site_a, Link(delay=0.001))            # inside a site
        lan.hub.partition(site_a, site_b)       # cut; lan.hub.heal() joins them again

**Scheduling.** A network element must not wait behind the processes it serves: the hub
runs at ``nice -10`` (it uses little CPU; its lateness is measured, see below), so a busy
machine delays frames less than it delays the nodes.

**Bounded.** The hub stops by itself after ``max_seconds`` (default one hour), when its stdin
closes (the harness went away), on SIGTERM, and with its parent (``PR_SET_PDEATHSIG``). Each
direction queues at most ``Link.limit`` frames (netem's ``limit``, default 1000) and the whole
hub at most ``max_queued`` (default 20,000); beyond that frames are dropped and counted
(``overflow``).

**Measured.** :meth:`Hub.stats` answers counters (frames in and out, drops by reason,
duplicates, reorders, queue high-water mark, per-pair offered/sent/dropped) and the hub's own
lateness: how long after its due time each frame was written (for an unimpaired frame, the
time the frame spent in the hub). ``bench/impair.py`` measures the round trip it adds against
a kernel bridge in the same run and the rate it sustains.

**Reproducible decisions.** The decisions come from ``random.Random(seed)``, in the order the
frames arrive; the arrival order of real traffic is not reproducible, so a seed fixes the
statistics of a run, not the fate of each frame.

**Control.** The harness talks to the hub process over its stdin and stdout, one JSON object
per line (``{"id": 3, "op": "partition", "groups": [[0, 1], [2, 3]]}`` answered by
``{"id": 3, "ok": true}``); a bad command gets ``"ok": false`` and an ``"error"``, never a
crash. :class:`Hub` wraps this.

NAT between namespaces is not built in: the kernel has NAT (nftables masquerade), but this
machine has no ``nft``/``iptables`` program. A router namespace with two ports on the hub and
``nft`` masquerade (Debian package ``nftables``) is the way to add it; the hub would forward its
frames like any host's.

Run by hand (root): ``ip netns exec NS python3 tests/impair.py hub --ports 3``.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import ctypes
import fcntl
import heapq
import json
import math
import os
import random
import select
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import attrs

__all__ = ["Hub", "ImpairError", "Link", "Plan", "Switch", "serve_hub"]

# Linux: <linux/if_tun.h>, <linux/prctl.h>
_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_PR_SET_PDEATHSIG = 1

MAX_FRAME = 65536
LATENESS_SAMPLES = 65536
DROP_REASONS = ("loss", "partition", "down", "overflow")


class ImpairError(RuntimeError):
    """Raised by :class:`Hub` when the hub process refuses a command (the message says why),
    does not answer within the timeout, or has ended."""


def _probability(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], not {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, not {value!r}")


def _rate(instance: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"rate must be bits per second > 0 (or None), not {value!r}")


def _limit(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= 1_000_000:
        raise ValueError(f"limit must be 1-1000000 frames, not {value!r}")


@attrs.frozen
class Link:
    """What happens to frames going one way between two hosts (netem's knobs).

    ``delay`` and ``jitter`` are seconds (uniform in ``delay +- jitter``, never below 0);
    ``loss``, ``reorder`` (the share of frames sent at once, skipping the delay) and
    ``duplicate`` are probabilities; ``rate`` is bits per second (``None``: unlimited);
    ``limit`` is how many frames may wait in this direction."""

    loss: float = attrs.field(default=0.0, validator=_probability)
    delay: float = attrs.field(default=0.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.0, validator=_non_negative)
    reorder: float = attrs.field(default=0.0, validator=_probability)
    duplicate: float = attrs.field(default=0.0, validator=_probability)
    rate: float | None = attrs.field(default=None, validator=_rate)
    limit: int = attrs.field(default=1000, validator=_limit)

    def to_json(self) -> dict[str, Any]:
        """The rule as a JSON object (how it crosses to the hub process)."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, doc: object) -> Link:
        """A rule from :meth:`to_json`'s form; ``ValueError`` names what is wrong."""
        if not isinstance(doc, dict):
            raise ValueError(f"a link must be a JSON object, not {doc!r}")
        known = {a.name for a in attrs.fields(cls)}
        unknown = set(doc) - known
        if unknown:
            raise ValueError(f"unknown link fields {sorted(unknown)}; known: {sorted(known)}")
        for key, value in doc.items():
            if key == "rate" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"link field {key!r} must be a number, not {value!r}")
        return cls(**doc)


class Switch:
    """A learning switch: which ports a frame goes to (pure: no sockets, no time)."""

    def __init__(self, ports: int) -> None:
        self.ports = ports
        self._where: dict[bytes, int] = {}

    def targets(self, port: int, frame: bytes) -> list[int]:
        """Learn *frame*'s source on *port*; return the ports it goes to."""
        if len(frame) < 14:
            return []
        src, dst = frame[6:12], frame[0:6]
        if not src[0] & 1:
            self._where[src] = port
        known = self._where.get(dst) if not dst[0] & 1 else None
        if known is not None:
            return [] if known == port else [known]
        return [p for p in range(self.ports) if p != port]


class Plan:
    """The impairment decisions of a hub (pure: it is handed the time and a random source).

    :meth:`route` says when a frame offered from port *src* to port *dst* leaves (zero, one or
    two departure times); :meth:`departed` is told when a queued frame left, which frees its
    place in the queue limits."""

    def __init__(self, ports: int, rng: random.Random, max_queued: int = 20_000) -> None:
        self.ports = ports
        self.rng = rng
        self.max_queued = max_queued
        self.default = Link()
        self.rules: dict[tuple[int, int], Link] = {}
        self.groups: list[int] | None = None
        self.down: set[int] = set()
        self.queued: dict[tuple[int, int], int] = {}
        self.total_queued = 0
        self.queued_max = 0
        self._busy_until: dict[tuple[int, int], float] = {}
        self._last_departure: dict[tuple[int, int], float] = {}
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.duplicated = 0
        self.reordered = 0
        self.pairs: dict[tuple[int, int], list[int]] = {}  # offered, sent (copies), dropped

    # -- configuration

    def check_port(self, port: object) -> int:
        """*port* as a port number; ``ValueError`` if it is not one."""
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < self.ports:
            raise ValueError(f"port must be an integer 0-{self.ports - 1}, not {port!r}")
        return port

    def set_link(
        self, sources: Iterable[int], destinations: Iterable[int], link: Link | None
    ) -> None:
        """Rule for every direction from *sources* to *destinations* (``None`` removes it)."""
        dests = [self.check_port(d) for d in destinations]
        for s in (self.check_port(p) for p in sources):
            for d in dests:
                if s == d:
                    continue
                if link is None:
                    self.rules.pop((s, d), None)
                else:
                    self.rules[(s, d)] = link

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Cut the network into *groups* (ports not named form one more group together)."""
        assignment = [-1] * self.ports
        for index, group in enumerate(groups):
            for port in group:
                if assignment[self.check_port(port)] != -1:
                    raise ValueError(f"port {port} is in two groups")
                assignment[port] = index
        self.groups = assignment

    def heal(self) -> None:
        """End the partition."""
        self.groups = None

    def link_for(self, src: int, dst: int) -> Link:
        """The rule that applies from *src* to *dst*."""
        return self.rules.get((src, dst), self.default)

    # -- decisions

    def _drop(self, reason: str, pair: list[int]) -> None:
        self.dropped[reason] += 1
        pair[2] += 1

    def route(self, src: int, dst: int, size: int, now: float) -> list[float]:
        """When the frame of *size* bytes offered at *now* leaves for *dst* (each time is a
        copy to queue); an empty list means dropped (counted by reason)."""
        key = (src, dst)
        pair = self.pairs.setdefault(key, [0, 0, 0])
        pair[0] += 1
        if src in self.down or dst in self.down:
            self._drop("down", pair)
            return []
        if self.groups is not None and self.groups[src] != self.groups[dst]:
            self._drop("partition", pair)
            return []
        link = self.rules.get(key, self.default)
        rng = self.rng
        if link.loss and rng.random() < link.loss:
            self._drop("loss", pair)
            return []
        copies = 2 if link.duplicate and rng.random() < link.duplicate else 1
        out: list[float] = []
        for copy in range(copies):
            if self.queued.get(key, 0) >= link.limit or self.total_queued >= self.max_queued:
                self._drop("overflow", pair)
                continue
            if copy:
                self.duplicated += 1
            start = now
            if link.rate is not None:
                start = max(now, self._busy_until.get(key, now)) + size * 8 / link.rate
                self._busy_until[key] = start
            if link.reorder and rng.random() < link.reorder:
                delay = 0.0
            elif link.jitter:
                delay = max(0.0, link.delay + rng.uniform(-link.jitter, link.jitter))
            else:
                delay = link.delay
            departure = start + delay
            latest = self._last_departure.get(key, -math.inf)
            if departure < latest:
                self.reordered += 1
            else:
                self._last_departure[key] = departure
            self.queued[key] = self.queued.get(key, 0) + 1
            self.total_queued += 1
            self.queued_max = max(self.queued_max, self.total_queued)
            pair[1] += 1
            out.append(departure)
        return out

    def departed(self, src: int, dst: int) -> None:
        """A frame queued from *src* to *dst* left the hub."""
        self.queued[(src, dst)] -= 1
        self.total_queued -= 1

    def statistics(self) -> dict[str, Any]:
        """Counters, as JSON."""
        return {
            "dropped": dict(self.dropped),
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "queued": self.total_queued,
            "queued_max": self.queued_max,
            "pairs": {
                f"{s}>{d}": {"offered": v[0], "sent": v[1], "dropped": v[2]}
                for (s, d), v in sorted(self.pairs.items())
            },
        }


# ------------------------------------------------------------------------------ the hub process


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


class _Hub:
    """The forwarding loop's state (one per hub process)."""

    def __init__(self, fds: list[int], plan: Plan, write: Callable[[str], None]) -> None:
        self.fds = fds
        self.plan = plan
        self.switch = Switch(len(fds))
        self.write = write
        self.heap: list[tuple[float, int, int, int, bytes]] = []
        self.seq = 0
        self.frames_in = 0
        self.frames_out = 0
        self.write_errors = 0
        self.lateness = array.array("d", bytes(8 * LATENESS_SAMPLES))
        self.lateness_count = 0
        self.lateness_max = 0.0
        self.started = time.monotonic()

    def receive(self, port: int, frame: bytes, now: float) -> None:
        self.frames_in += 1
        for dst in self.switch.targets(port, frame):
            for departure in self.plan.route(port, dst, len(frame), now):
                self.seq += 1
                heapq.heappush(self.heap, (departure, self.seq, port, dst, frame))

    def flush(self, now: float) -> None:
        heap = self.heap
        while heap and heap[0][0] <= now:
            due, _, src, dst, frame = heapq.heappop(heap)
            self.plan.departed(src, dst)
            try:
                os.write(self.fds[dst], frame)
            except OSError:  # EIO: the host's eth0 is down; the frame is lost like on a wire
                self.write_errors += 1
                continue
            self.frames_out += 1
            late = time.monotonic() - due
            self.lateness[self.lateness_count % LATENESS_SAMPLES] = late
            self.lateness_count += 1
            self.lateness_max = max(self.lateness_max, late)

    def statistics(self) -> dict[str, Any]:
        kept = sorted(self.lateness[: min(self.lateness_count, LATENESS_SAMPLES)])
        return {
            "uptime": time.monotonic() - self.started,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "write_errors": self.write_errors,
            "lateness_ms": {
                "count": self.lateness_count,
                "p50": 1000 * _percentile(kept, 0.50),
                "p99": 1000 * _percentile(kept, 0.99),
                "max": 1000 * self.lateness_max,
            },
            **self.plan.statistics(),
        }

    def command(self, line: str) -> bool:
        """Carry out one control line; False when told to stop."""
        ident: object = None
        try:
            doc = json.loads(line)
            if not isinstance(doc, dict):
                raise ValueError("a command is a JSON object")
            ident = doc.get("id")
            op = doc.get("op")
            reply: dict[str, Any] = {}
            plan = self.plan
            if op == "default":
                plan.default = Link.from_json(doc.get("link"))
            elif op == "link":
                raw = doc.get("link")
                plan.set_link(
                    _ports(doc.get("src")), _ports(doc.get("dst")),
                    None if raw is None else Link.from_json(raw),
                )  # fmt: skip
            elif op == "partition":
                groups = doc.get("groups")
                if not isinstance(groups, list):
                    raise ValueError("'groups' must be a list of lists of ports")
                plan.partition([_ports(g) for g in groups])
            elif op == "heal":
                plan.heal()
            elif op in ("down", "up"):
                port = plan.check_port(doc.get("port"))
                (plan.down.add if op == "down" else plan.down.discard)(port)
            elif op == "stats":
                reply = self.statistics()
            elif op == "stop":
                self.write(json.dumps({"id": ident, "ok": True, **self.statistics()}))
                return False
            else:
                raise ValueError(f"unknown op {op!r}")
            self.write(json.dumps({"id": ident, "ok": True, **reply}))
        except (ValueError, TypeError) as exc:
            self.write(json.dumps({"id": ident, "ok": False, "error": str(exc)}))
        return True


def _ports(value: object) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return list(value)
    raise ValueError(f"ports must be an integer or a list of integers, not {value!r}")


def serve_hub(names: Sequence[str], plan: Plan, max_seconds: float, control: int) -> str:
    """Create a TAP device per name and forward frames between them through *plan* until
    *max_seconds* pass, *control* (a file descriptor of command lines) closes, a ``stop``
    command or SIGTERM; answer commands on stdout; return why it stopped."""
    fds = [_open_tap(name) for name in names]
    port_of = {fd: i for i, fd in enumerate(fds)}
    hub = _Hub(fds, plan, lambda text: print(text, flush=True))
    stopping: list[str] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append("SIGTERM"))
    os.set_blocking(control, False)
    poller = select.epoll()
    for fd in fds:
        poller.register(fd, select.EPOLLIN)
    poller.register(control, select.EPOLLIN)
    pending = b""
    end = time.monotonic() + max_seconds
    print(json.dumps({"ready": True, "ports": list(names)}), flush=True)
    while not stopping:
        now = time.monotonic()
        if now >= end:
            stopping.append(f"time limit of {max_seconds} s")
            break
        wait = min(end - now, 0.5)  # a signal does not wake the poll (PEP 475): look again soon
        if hub.heap:
            wait = min(wait, max(0.0, hub.heap[0][0] - now))
        try:
            events = poller.poll(wait)
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd, _ in events:
            if fd == control:
                chunk = os.read(control, 65536)
                if not chunk:
                    stopping.append("control closed")
                    break
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line.strip() and not hub.command(line.decode(errors="replace")):
                        stopping.append("stop command")
                continue
            port = port_of[fd]
            for _ in range(64):  # a fair share per port and wake-up
                try:
                    frame = os.read(fd, MAX_FRAME)
                except (BlockingIOError, InterruptedError):
                    break
                hub.receive(port, frame, now)
        hub.flush(time.monotonic())
    poller.close()
    for fd in fds:
        os.close(fd)
    if stopping[0] != "stop command":
        print(json.dumps({"stopped": stopping[0], **hub.statistics()}), flush=True)
    return stopping[0]


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def main(argv: Sequence[str] | None = None) -> int:
    """``impair.py hub --ports N``: run a hub in the current network namespace."""
    parser = argparse.ArgumentParser(prog="impair.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    hub = sub.add_parser("hub", help="forward frames between TAP devices t0..tN-1")
    hub.add_argument("--ports", type=int, required=True)
    hub.add_argument("--prefix", default="t")
    hub.add_argument("--seed", type=int, default=0)
    hub.add_argument("--max-seconds", type=float, default=3600.0)
    hub.add_argument("--max-queued", type=int, default=20_000)
    hub.add_argument("--link", default="{}", help="the default rule, as JSON")
    hub.add_argument("--nice", type=int, default=-10, help="scheduling priority (root)")
    args = parser.parse_args(argv)
    if not 1 <= args.ports <= 250:
        parser.error("--ports must be 1-250")
    _die_with_parent()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    plan = Plan(args.ports, random.Random(args.seed), args.max_queued)
    plan.default = Link.from_json(json.loads(args.link))
    names = [f"{args.prefix}{i}" for i in range(args.ports)]
    serve_hub(names, plan, args.max_seconds, sys.stdin.fileno())
    return 0


# ------------------------------------------------------------------------------ the harness side


class LineProcess(Protocol):
    """A process spoken to in lines (:class:`tests.netns.Spawned` started with a stdin)."""

    def send(self, line: str) -> None: ...

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str: ...

    def stop(self, timeout: float = 5.0) -> int: ...


class Hub:
    """Control of a running hub process: rules, partitions, unplugged ports, counters.

    Made by :class:`tests.netns.Lan` with ``impair=``; ports are host indices. Every method
    waits for the hub's answer (a few milliseconds) and raises :class:`ImpairError` if it
    refuses or does not answer."""

    def __init__(self, process: LineProcess, ports: int, timeout: float = 10.0) -> None:
        self.process = process
        self.ports = ports
        self.timeout = timeout
        self.final: dict[str, Any] | None = None
        self._next = 0

    def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        self._next += 1
        ident = self._next

        def answer(line: str) -> bool:
            try:
                doc = json.loads(line)
            except ValueError:
                return False
            return isinstance(doc, dict) and doc.get("id") == ident

        try:
            self.process.send(json.dumps({"id": ident, "op": op, **fields}))
            reply: dict[str, Any] = json.loads(self.process.wait_for(answer, self.timeout))
        except (TimeoutError, RuntimeError) as exc:
            raise ImpairError(f"hub did not answer {op!r}: {exc}") from exc
        if not reply.get("ok"):
            raise ImpairError(f"hub refused {op!r}: {reply.get('error')}")
        return reply

    def set_default(self, link: Link) -> None:
        """The rule of every direction that has none of its own."""
        self._call("default", link=link.to_json())

    def set_link(
        self,
        a: int | Iterable[int],
        b: int | Iterable[int],
        link: Link | None,
        *,
        both_ways: bool = True,
    ) -> None:
        """The rule from every port of *a* to every port of *b* (and back unless
        ``both_ways=False``); ``None`` returns them to the default."""
        src = [a] if isinstance(a, int) else list(a)
        dst = [b] if isinstance(b, int) else list(b)
        raw = None if link is None else link.to_json()
        self._call("link", src=src, dst=dst, link=raw)
        if both_ways:
            self._call("link", src=dst, dst=src, link=raw)

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut the network into *groups* of ports (ports not named form one more group)."""
        self._call("partition", groups=[list(g) for g in groups])

    def heal(self) -> None:
        """End the partition."""
        self._call("heal")

    def down(self, port: int) -> None:
        """Unplug *port*: nothing to or from it passes."""
        self._call("down", port=port)

    def up(self, port: int) -> None:
        """Plug *port* back in."""
        self._call("up", port=port)

    def stats(self) -> dict[str, Any]:
        """The hub's counters (see the module docstring)."""
        reply = self._call("stats")
        reply.pop("id", None)
        reply.pop("ok", None)
        return reply

    def close(self) -> dict[str, Any] | None:
        """Stop the hub (its TAP devices, every host's ``eth0``, go with it); return its final
        counters, or ``None`` if it had already ended."""
        if self.final is None:
            with contextlib.suppress(ImpairError):
                self.final = self._call("stop")
        self.process.stop()
        return self.final


if __name__ == "__main__":
    sys.exit(main())
