"""The guardian: stops a station's role processes when the station dies, however it dies.

A station's supervisor starts one guardian, a small process in its own session
(``python -I -S <this file> <station pid> [<pid>:<start_time>:<grace> ...]``: the standard
library only, nothing of the package,
so it starts in a few tens of milliseconds and holds a few MiB), and keeps the write end of the
guardian's stdin. A guardian started again (the last one died) gets the groups already
watched on its command line, so no guardian ever runs without knowing them (a station killed
just after it started one would leave its roles running). Then the station tells the guardian
about every role process group it starts and every one that is gone, one line each::

    watch <pid> <start_time> <grace>
    forget <pid>

When the station dies (``kill -9`` included), the kernel closes its end of the pipe: the guardian
reads end-of-file, sends SIGTERM to every group it still watches, waits up to the largest
``grace`` for them to be gone, sends SIGKILL to what is left, and exits. A station that closes
normally has stopped its processes first, so the guardian finds nothing to do. This reaches a
role's own children too (they share its process group), which ``PR_SET_PDEATHSIG`` on the role
process could not, and it does not depend on which thread forked the role (trio forks from a
worker thread that ends when idle, and the death signal follows the forking thread).

A pid alone is not an identity: pids are recycled (``pid_max`` is often 32768). A process is
named by its pid *and* its start time (field 22 of ``/proc/<pid>/stat``, clock ticks since
boot). A live process with the recorded pid but another start time is someone else's and is
never signalled. If the recorded leader is gone but processes of its group remain, the group id
still names that group: Linux does not hand out a pid that is in use as a process group id.

The helpers here are also used by the supervisor to stop leftovers recorded by an earlier run of
its station (:func:`stop_processes`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

__all__ = [
    "ProcStat",
    "boot_id",
    "main",
    "proc_stat",
    "process_group_alive",
    "remaining",
    "stop_processes",
]

_POLL = 0.02


class ProcStat(NamedTuple):
    """What ``/proc/<pid>/stat`` says of a process: its ``state`` letter (``Z``: zombie), its
    process group ``pgrp`` and its ``start_time`` (clock ticks after boot)."""

    state: str
    pgrp: int
    start_time: int


def proc_stat(pid: int) -> ProcStat | None:
    """Return the :class:`ProcStat` of *pid*, or ``None`` if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return ProcStat(state=fields[0], pgrp=int(fields[2]), start_time=int(fields[19]))
    except (IndexError, ValueError):
        return None


def boot_id() -> str:
    """Return this boot's id (records of an earlier boot name no living process)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_group_alive(pgid: int) -> bool:
    """Return whether any live (not zombie) process is in process group *pgid*.

    Zombies are ignored: they hold nothing and disappear once their parent reaps them.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return True
    for pid in pids:
        stat = proc_stat(pid)
        if stat is not None and stat.pgrp == pgid and stat.state not in ("Z", "X"):
            return True
    return False


def remaining(pid: int, start_time: int) -> bool:
    """Return whether the process (*pid*, *start_time*) or its process group still has a live
    process. A live process with that pid but another start time is not it: ``False``."""
    stat = proc_stat(pid)
    if stat is not None and stat.start_time != start_time:
        return False  # the pid was recycled (the group cannot be: see the module docstring)
    if stat is not None and stat.state not in ("Z", "X"):
        return True
    return process_group_alive(pid)


def _signal(pid: int, start_time: int, sig: int) -> None:
    """Send *sig* to the group of (*pid*, *start_time*), and to the process itself if it does
    not lead a group; never to a recycled pid."""
    stat = proc_stat(pid)
    if stat is not None and stat.start_time != start_time:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    if stat is not None and stat.pgrp != pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop_processes(
    processes: Iterable[tuple[int, int]],
    grace: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> list[int]:
    """Stop each (pid, start time) still there with its group: SIGTERM, up to *grace*
    seconds for all to be gone, SIGKILL to the rest, then up to 1 s for the kernel to finish.
    Return the pids that were there (recycled pids are left alone and not returned)."""
    targets = [(pid, start) for pid, start in processes if remaining(pid, start)]
    for pid, start in targets:
        _signal(pid, start, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(remaining(p, s) for p, s in targets) and time.monotonic() < deadline:
        sleep(_POLL)
    for pid, start in targets:
        if remaining(pid, start):
            _signal(pid, start, signal.SIGKILL)
    deadline = time.monotonic() + 1.0
    while any(remaining(p, s) for p, s in targets) and time.monotonic() < deadline:
        sleep(_POLL)
    return [pid for pid, _ in targets]


def _watch(watched: dict[int, tuple[int, float]], fields: list[str]) -> None:
    """Watch the group of *fields* ``[pid, start_time, grace]`` (a command-line argument's or
    a ``watch`` line's); ValueError if they are not that."""
    pid, start, grace = fields
    watched[int(pid)] = (int(start), float(grace))


def main() -> int:
    """Run the guardian: watch what stdin says, and at its end stop what is still watched."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # a terminal's ^C is for the station, not for us
    watched: dict[int, tuple[int, float]] = {}
    for spec in sys.argv[2:]:
        try:
            _watch(watched, spec.split(":"))
        except ValueError:
            print(f"stagemesh guardian: ignoring a malformed argument {spec!r}", file=sys.stderr)
    for raw in sys.stdin.buffer:
        parts = raw.decode("ascii", "replace").split()
        try:
            if parts[0] == "watch":
                _watch(watched, parts[1:])
            elif parts[0] == "forget" and len(parts) == 2:
                watched.pop(int(parts[1]), None)
            else:
                raise ValueError(raw)
        except (IndexError, ValueError):
            print(f"stagemesh guardian: ignoring a malformed line {raw!r}", file=sys.stderr)
    if not watched:
        return 0
    grace = max(g for _, g in watched.values())
    stopped = stop_processes(((pid, start) for pid, (start, _) in watched.items()), grace)
    if stopped:
        station = sys.argv[1] if len(sys.argv) > 1 else "?"
        print(
            f"stagemesh guardian: station process {station} is gone; stopped its role "
            f"process group(s) {', '.join(map(str, stopped))}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
