"""A soak of real nodes on a bad network: hosts in namespaces behind the impairing hub
(:mod:`tests.impair`), with random halves partitioned and healed on a schedule, watched through
every node's status API and read back from every node's log.

Used by ``tests/test_soak.py`` (60 s) and ``bench/soak.py`` (10 minutes). One run:

1. ``Lan(hosts, impair=link)``: every frame between hosts crosses the hub (by default 5 % loss,
   20 ms +- 10 ms delay, which reorders). One ``stagemesh node`` per host, all conductor
   candidates, beacons for discovery (no mDNS, to spare the CPU), JSON logs.
2. Wait until every node sees every other alive, one conductor and a synced clock, then
   ``warmup`` seconds more (a fresh clock narrows its error for a while: not judged).
3. For ``duration`` seconds: every ``cycle`` seconds the hosts are split into two random
   halves for ``partition`` seconds, then healed. Meanwhile, every ``sample_every`` seconds,
   every node's ``/api/status`` and ``/api/clock`` are read (in parallel; from inside each
   namespace, see :meth:`tests.netns.Lan.get_json`).
4. Judge (:func:`judge`):

   - **false deaths**: from the node logs, a ``dead`` event of member B at node A is false
     unless a partition separated A and B at that moment or ended less than ``merge_bound``
     seconds before (a suspicion begun during the partition may end just after the heal);
   - **conductors**: no two nodes hold the post at once unless a partition separates them
     (or its heal is still merging), by their own logs (``conductor: A -> B (term T)``: exact,
     where sampling could miss a short overlap); in every round of samples the nodes of one
     side never name two different conductors; after each heal the group names the conductor
     it had before the first partition (the longer tenure wins);
   - **merge**: the time from each heal to the first round in which every node sees every
     node alive and all name one conductor;
   - **clock**: for every sample of a synced node, the difference between its federation time
     and its reference's (its conductor), both as ``federation_time - host_time`` read at one
     instant in each node (all namespaces share the host's clock; the host's clock is read
     just before and after federation time, and the narrowest of three readings kept: half
     of the two windows is the measurement's own error bound, reported too): p50, p99, max.

Nothing here sleeps to synchronise: sleeps keep the schedule of partitions (and pace the
sampler, which runs on its own thread so that a node that stops answering cannot delay a
heal), and every wait for a state is :func:`wait_until` with a deadline.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from tests.harness import wait_until
from tests.impair import Link
from tests.netns import Host, Lan, Spawned

__all__ = [
    "Sampler",
    "SoakConfig",
    "SoakResult",
    "judge",
    "member_events",
    "random_halves",
    "run_soak",
    "schedule",
]

EVENT = re.compile(r"^(?P<path>/\S+) (?P<kind>joined|updated|suspect|alive|dead|left|reaped) at ")
POST = re.compile(r"^conductor: (?P<old>\S+) -> (?P<new>\S+) \(term (?P<term>\d+)\)$")


@attrs.frozen
class SoakConfig:
    """What a soak does (the defaults are the bench's 10 minutes)."""

    hosts: int = 8
    duration: float = 600.0
    cycle: float = 60.0
    partition: float = 20.0
    link: Link = attrs.field(factory=lambda: Link(loss=0.05, delay=0.020, jitter=0.010))
    merge_bound: float = 5.0
    sample_every: float = 0.5
    merge_every: float = 0.1
    warmup: float = 10.0
    settled: float = 0.025
    """Before the soak begins, every follower's error bound must be this small (seconds)."""
    seed: int = 1
    profile: str = "lan"


@attrs.define
class Round:
    """One round of samples: when, and each node's status and clock (``None``: no answer)."""

    started: float  # wall clock (time.time())
    ended: float
    statuses: list[dict[str, Any] | None]
    clocks: list[dict[str, Any] | None]


@attrs.define
class Cut:
    """One partition: its sides (host indices) and its wall-clock start and end."""

    sides: tuple[tuple[int, ...], tuple[int, ...]]
    started: float
    healed: float = math.inf

    def separates(self, a: int, b: int) -> bool:
        return (a in self.sides[0]) != (b in self.sides[0])


@attrs.define
class SoakResult:
    """Everything a soak saw, and the judgement (:func:`judge`)."""

    config: SoakConfig
    paths: list[str]
    rounds: list[Round]
    cuts: list[Cut]
    logs: list[str]
    hub: dict[str, Any]
    formed_after: float
    first_conductor: str | None
    exits: list[int | None]
    """Each node's exit status at the end (``None``: still running, as it should be)."""
    verdict: dict[str, Any] = attrs.field(factory=dict)


def member_events(log: str) -> list[tuple[float, str, str]]:
    """``(wall time, path, kind)`` of every member event in a node's JSON log."""
    events = []
    for doc in _log_lines(log):
        match = EVENT.match(str(doc["message"]))
        if match:
            events.append((float(doc["time"]), match["path"], match["kind"]))
    return events


def _log_lines(log: str) -> list[dict[str, Any]]:
    docs = []
    for line in log.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "message" in doc and "time" in doc:
            docs.append(doc)
    return docs


def holdings(log: str, path: str, end: float) -> list[tuple[float, float, int]]:
    """``(from, to, term)`` of each time the node at *path* held the conductor post, by its
    own log (a post still held at the end runs to *end*)."""
    held: list[tuple[float, float, int]] = []
    since: tuple[float, int] | None = None
    for doc in _log_lines(log):
        match = POST.match(str(doc["message"]))
        if not match:
            continue
        when = float(doc["time"])
        if match["new"] == path and since is None:
            since = (when, int(match["term"]))
        elif match["old"] == path and match["new"] != path and since is not None:
            held.append((since[0], when, since[1]))
            since = None
    if since is not None:
        held.append((since[0], end, since[1]))
    return held


def _minus(
    span: tuple[float, float], holes: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The parts of *span* outside every hole."""
    parts = [span]
    for lo, hi in holes:
        parts = [
            piece
            for a, b in parts
            for piece in ((a, min(b, lo)), (max(a, hi), b))
            if piece[1] > piece[0]
        ]
    return parts


def _start_nodes(
    lan: Lan, tmp: Path, config: SoakConfig, federation: str
) -> tuple[list[Spawned], list[str]]:
    # JSON logs (member and post events are read back); debug level so that a node that
    # fails prints its traceback (the CLI shows one only at that level).
    env = {**os.environ, "STAGEMESH_LOG_FORMAT": "json", "STAGEMESH_LOG_LEVEL": "debug"}
    procs: list[Spawned] = [
        lan.spawn(
            host,
            *(sys.executable, "-m", "mesh", "node", "--federation", federation),
            *("--bind", "0.0.0.0", "--orchestra", "o1", "--name", f"h{host.index}"),
            *("--state-dir", str(tmp / f"state{host.index}"), "--profile", config.profile),
            *("--conductor", "--no-mdns"),
            env=env,
        )
        for host in lan.hosts
    ]
    urls = []
    for proc in procs:
        line = proc.wait_for(lambda text: text.startswith("ready "), timeout=60)
        urls.append(dict(part.split("=", 1) for part in line.split()[1:])["status"])
    return procs, urls


_failures: dict[str, int] = {}


def _get(lan: Lan, host: Host, url: str) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = lan.get_json(host, url, timeout=2.0)
    except (OSError, ValueError, RuntimeError) as exc:
        key = f"{host.netns[-2:]} {type(exc).__name__}: {exc}"[:120]
        _failures[key] = _failures.get(key, 0) + 1
        return None
    return doc


def sample_node(
    lan: Lan, host: Host, url: str, reads: int = 3
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """One node's ``/api/status`` and the best of *reads* ``/api/clock`` answers (``None``:
    no answer).

    A node reads the host's clock just before and just after its federation time
    (``host_window`` apart): if it is preempted in between (a busy machine), the window is
    wide, and ``federation_time - host_time`` is off by up to half of it. The reading with the
    narrowest window is kept: half its window is the measurement's own error bound."""
    status = _get(lan, host, url + "/api/status")
    clocks = [doc for doc in (_get(lan, host, url + "/api/clock") for _ in range(reads)) if doc]
    clock = min(clocks, key=lambda d: d["host_window"], default=None)
    return status, clock


def _alive_view(doc: dict[str, Any] | None) -> frozenset[str]:
    if doc is None:
        return frozenset()
    return frozenset(m["path"] for m in doc["members"] if m["state"] == "alive")


def merged(rnd: Round, paths: Sequence[str], among: Sequence[int] | None = None) -> bool:
    """Every node (of *among*, by default all) answered, sees all of them alive, and all name
    one conductor. (*among* leaves out a node that failed, so that one failure, reported on
    its own, does not hide how the others merged.)"""
    chosen = range(len(paths)) if among is None else among
    everyone = frozenset(paths[i] for i in chosen)
    docs = [rnd.statuses[i] for i in chosen]
    named = {doc["conductor"] for doc in docs if doc is not None}
    return (
        all(doc is not None and everyone <= _alive_view(doc) for doc in docs)
        and len(named) == 1
        and None not in named
    )


def run_soak(
    config: SoakConfig,
    tmp: Path,
    progress: Callable[[str], None] = lambda text: None,
) -> SoakResult:
    """Run one soak (see the module docstring) and return what it saw, judged."""
    rng = random.Random(config.seed)
    federation = f"soak-{secrets.token_hex(3)}"
    with (
        Lan(
            config.hosts,
            impair=config.link,
            seed=config.seed,
            hub_seconds=config.duration + 600,
        ) as lan,
        ThreadPoolExecutor(2 * config.hosts) as pool,
    ):
        started = time.monotonic()
        nodes, urls = _start_nodes(lan, tmp, config, federation)
        paths = [f"/o1/h{h.index}" for h in lan.hosts]
        n = len(paths)
        progress(f"{len(urls)} nodes ready after {time.monotonic() - started:.1f} s")

        def sample_round() -> Round:
            begun = time.time()
            answers = list(pool.map(lambda i: sample_node(lan, lan.hosts[i], urls[i]), range(n)))
            return Round(begun, time.time(), [a[0] for a in answers], [a[1] for a in answers])

        def formed() -> bool:
            rnd = sample_round()
            return merged(rnd, paths) and all(
                doc is not None and (doc["clock"]["synced"] or doc["clock"]["is_reference"])
                for doc in rnd.statuses
            )

        formed_after = wait_until(formed, 120, "all nodes alive, one conductor, clocks synced")

        def settled() -> bool:
            # Synced means within 100 ms; a clock that has just joined its lineage may still be
            # slewing tens of ms: the soak judges clocks that have settled (their bounds).
            rnd = sample_round()
            return all(
                doc is not None
                and (doc["clock"]["is_reference"] or doc["clock"]["error_bound"] <= config.settled)
                for doc in rnd.statuses
            )

        formed_after += wait_until(settled, 120, "every clock's error bound settled")
        first = sample_round().statuses[0]
        first_conductor = None if first is None else first["conductor"]
        progress(f"formed after {formed_after:.1f} s more; conductor {first_conductor}")

        time.sleep(config.warmup)  # clocks still converging: not judged
        cuts: list[Cut] = []
        sampler = Sampler(sample_round, config.sample_every, config.merge_every)
        begin = time.monotonic()
        sampler.start()
        try:
            for start_at, heal_at in schedule(config):
                sides = random_halves(rng, config.hosts)
                time.sleep(max(0.0, begin + start_at - time.monotonic()))  # the schedule
                lan.hub.partition(*sides)
                cuts.append(Cut(sides, time.time()))
                progress(f"{time.monotonic() - begin:5.1f} s: partition {sides[0]} | {sides[1]}")
                time.sleep(max(0.0, begin + heal_at - time.monotonic()))
                lan.hub.heal()
                cut = cuts[-1]
                cut.healed = time.time()
                sampler.fast_until = time.monotonic() + config.merge_bound + 1  # time the merge

                def merged_after(cut: Cut = cut) -> bool:
                    running = [i for i, proc in enumerate(nodes) if proc.process.poll() is None]
                    return any(
                        r.started >= cut.healed and merged(r, paths, running)
                        for r in sampler.rounds[-20:]
                    )

                try:
                    took = wait_until(merged_after, config.merge_bound + 1, "merge", every=0.05)
                    progress(f"{time.monotonic() - begin:5.1f} s: healed, merged in {took:.2f} s")
                except AssertionError:
                    progress(f"{time.monotonic() - begin:5.1f} s: healed, NOT merged in time")
            time.sleep(max(0.0, begin + config.duration - time.monotonic()))
        finally:
            sampler.stop()
        rounds = sampler.rounds
        hub = lan.hub.stats()
        logs = [proc.stderr() for proc in nodes]
        exits = [proc.process.poll() for proc in nodes]
    result = SoakResult(
        config, paths, rounds, cuts, logs, hub, formed_after, first_conductor, exits
    )
    result.verdict = judge(result)
    return result


def schedule(config: SoakConfig) -> list[tuple[float, float]]:
    """``(start, heal)`` of each partition, in seconds from the start of the soak: one in the
    middle of every whole ``cycle``, ``partition`` seconds long."""
    margin = (config.cycle - config.partition) / 2
    return [
        (k * config.cycle + margin, k * config.cycle + margin + config.partition)
        for k in range(int(config.duration // config.cycle))
    ]


def random_halves(rng: random.Random, hosts: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The hosts split into two random halves."""
    order = list(range(hosts))
    rng.shuffle(order)
    return tuple(sorted(order[: hosts // 2])), tuple(sorted(order[hosts // 2 :]))


class Sampler(threading.Thread):
    """Takes rounds of samples one after another, every ``every`` seconds (every
    ``fast_every`` until ``fast_until``), on its own thread: a node that does not answer slows
    the samples, never the schedule of partitions."""

    def __init__(self, sample: Callable[[], Round], every: float, fast_every: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.sample = sample
        self.every = every
        self.fast_every = fast_every
        self.fast_until = 0.0
        self.rounds: list[Round] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            begun = time.monotonic()
            self.rounds.append(self.sample())
            every = self.fast_every if time.monotonic() < self.fast_until else self.every
            self._stop_event.wait(max(0.0, begun + every - time.monotonic()))

    def stop(self) -> None:
        """Stop after the round under way."""
        self._stop_event.set()
        self.join(timeout=60)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "samples": len(values),
        "p50": 1e6 * _percentile(values, 0.50),
        "p99": 1e6 * _percentile(values, 0.99),
        "max": 1e6 * max(values, default=math.nan),
    }


def judge(result: SoakResult, settle_after: float = 10.0) -> dict[str, Any]:
    """The figures of a soak, and which of its promises held (see the module docstring)."""
    config, paths, cuts = result.config, result.paths, result.cuts
    index = {path: i for i, path in enumerate(paths)}
    running = [i for i, status in enumerate(result.exits) if status is None]

    # A node that failed is rightly declared dead after its last word (reported on its own).
    gone = {
        i: max((float(d["time"]) for d in _log_lines(result.logs[i])), default=0.0)
        for i, status in enumerate(result.exits)
        if status is not None
    }

    def excused(a: int, b: int, when: float) -> bool:
        return when >= gone.get(b, math.inf) or any(
            c.separates(a, b) and c.started <= when <= c.healed + config.merge_bound for c in cuts
        )

    false_deaths = []
    suspicions_connected = 0
    for observer, log in enumerate(result.logs):
        events = member_events(log)
        for when, path, kind in events:
            other = index.get(path)
            if other is None or other == observer:
                continue
            if kind == "dead" and not excused(observer, other, when):
                false_deaths.append({"observer": paths[observer], "member": path, "time": when})
            if kind == "suspect" and not excused(observer, other, when):
                suspicions_connected += 1

    # Conductors: per side, never two; once merged, the first one. While a heal is merging
    # (up to merge_bound) two may still be named: the merge criterion covers that time.
    two_conductors = []
    other_conductors: set[str] = set()
    for rnd in result.rounds:
        active = [c for c in cuts if c.started <= rnd.ended and rnd.started <= c.healed]
        merging = any(c.healed <= rnd.ended <= c.healed + config.merge_bound for c in cuts)
        if merging and not active:
            continue
        sides = [list(s) for s in active[-1].sides] if active else [list(range(len(paths)))]
        for side in sides:
            named = {
                doc["conductor"]
                for i, doc in enumerate(rnd.statuses)
                if i in side and doc is not None and doc["conductor"] is not None
            }
            if len(named) > 1:
                two_conductors.append({"time": rnd.started, "side": side, "named": sorted(named)})
        if not active and merged(rnd, paths, running):
            first = rnd.statuses[running[0]]
            conductor = first["conductor"] if first else None
            if conductor != result.first_conductor:
                other_conductors.add(str(conductor))

    # Two holders at once, from the nodes' own logs (exact, unlike sampling): any overlap of
    # two nodes' tenures while no partition separated them (or its merge was still running).
    end = max((r.ended for r in result.rounds), default=0.0)
    held = [holdings(log, paths[i], end) for i, log in enumerate(result.logs)]
    dual = []
    for a in range(len(paths)):
        for b in range(a + 1, len(paths)):
            excused_spans = [
                (c.started, c.healed + config.merge_bound) for c in cuts if c.separates(a, b)
            ]
            for start_a, end_a, term_a in held[a]:
                for start_b, end_b, term_b in held[b]:
                    overlap = (max(start_a, start_b), min(end_a, end_b))
                    for lo, hi in _minus(overlap, excused_spans) if overlap[1] > overlap[0] else []:
                        dual.append({"holders": [paths[a], paths[b]], "terms": [term_a, term_b],
                                     "time": lo, "seconds": hi - lo})  # fmt: skip

    merge_times = []
    for cut in cuts:
        after = [r for r in result.rounds if r.started >= cut.healed and merged(r, paths, running)]
        merge_times.append(after[0].ended - cut.healed if after else math.inf)

    # Clock: each synced follower against its reference, split into steady rounds and those
    # of a partition or the settle_after seconds after its heal (references change then).
    errors: dict[str, list[float]] = {"steady": [], "partition": []}
    bound_violations = []
    went_back = []
    unanswered = 0
    read_errors: list[float] = []
    last_time: dict[int, float] = {}
    for rnd in result.rounds:
        disturbed = any(c.started <= rnd.ended <= c.healed + settle_after for c in cuts)
        offsets: dict[str, float] = {}
        windows: dict[str, float] = {}
        for i, doc in enumerate(rnd.clocks):
            if doc is None:
                unanswered += 1
                continue
            offsets[paths[i]] = doc["federation_time"] - doc["host_time"]
            windows[paths[i]] = doc["host_window"]
            if doc["federation_time"] < last_time.get(i, -math.inf):
                went_back.append({"node": paths[i], "time": rnd.started})
            last_time[i] = doc["federation_time"]
        for i, doc in enumerate(rnd.statuses):
            if doc is None or not doc["clock"]["synced"] or doc["clock"]["is_reference"]:
                continue
            reference = doc["clock"]["reference"]
            if paths[i] in offsets and reference in offsets:
                error = abs(offsets[paths[i]] - offsets[reference])
                read_errors.append(windows[paths[i]] / 2 + windows[reference] / 2)
                errors["partition" if disturbed else "steady"].append(error)
                bound = doc["clock"]["error_bound"]
                if bound is not None and error > bound:
                    bound_violations.append(
                        {"node": paths[i], "time": rnd.started, "error": error, "bound": bound}
                    )
    every = errors["steady"] + errors["partition"]

    hub = result.hub
    verdict = {
        "false_deaths": false_deaths,
        "suspicions_outside_partitions": suspicions_connected,
        "two_conductors_in_one_side": two_conductors,
        "two_holders": dual,
        "two_holders_longest_s": max((d["seconds"] for d in dual), default=0.0),
        "conductor_changed_to": sorted(other_conductors),
        "merge_seconds": merge_times,
        "merge_max": max(merge_times, default=0.0),
        "clock_us": {phase: _spread(values) for phase, values in (("all", every), *errors.items())},
        "clock_p99_us": 1e6 * _percentile(every, 0.99),
        "clock_read_error_us": _spread(read_errors),
        "clock_bound_violations": bound_violations,
        "clock_went_back": went_back,
        "nodes_exited": {p: e for p, e in zip(paths, result.exits, strict=True) if e is not None},
        "rounds": len(result.rounds),
        "unanswered_samples": unanswered,
        "partitions": len(cuts),
        "hub": {
            "frames_in": hub.get("frames_in"),
            "frames_out": hub.get("frames_out"),
            "dropped": hub.get("dropped"),
            "duplicated": hub.get("duplicated"),
            "reordered": hub.get("reordered"),
            "lateness_ms": hub.get("lateness_ms"),
        },
    }
    verdict["ok"] = {
        "every node ran to the end": not verdict["nodes_exited"],
        "no false deaths": not false_deaths,
        "one conductor": not dual and not two_conductors and not other_conductors,
        f"merged within {config.merge_bound} s": verdict["merge_max"] <= config.merge_bound,
        "clock p99 <= 1 ms": verdict["clock_p99_us"] <= 1000,
        "clock never went back": not went_back,
    }
    return verdict
