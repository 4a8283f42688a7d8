"""The process supervisor: runs every role instance as a child process, as its state machine says.

What to do with an instance (start, stop, back off, give up for a while, run again) is decided by
its :class:`~roles._instance.InstanceCore` (pure, see :mod:`roles._instance` for the states and
the back-off); this module is the trio driver that starts and stops the processes, reads their
output, keeps the clock, and turns the core's transitions into :class:`SupervisorEvent` values.

Each instance runs in its own session (``start_new_session=True``), so its process group holds
the command and everything it starts; stopping sends SIGTERM to the whole group, waits
``stop_grace`` seconds for the group to be gone, then sends SIGKILL. The group is also cleared
when the command exits by itself, and when the supervisor's nursery exits (also on
cancellation). If the supervisor's process dies without doing so (``kill -9``), the guardian
process stops the groups (:mod:`roles._leftovers`); with a ``state_dir`` the running processes
are also recorded there, and leftovers of an earlier run are stopped before anything starts.

Every state change is a :class:`SupervisorEvent`, given to the ``on_event`` callback and to every
channel from :meth:`Supervisor.subscribe`; :meth:`Supervisor.snapshot` returns a frozen view.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from roles._factories import ProcessSpec
from roles._guardian import process_group_alive, stop_processes
from roles._instance import (
    BackoffPolicy,
    InstanceCore,
    ProcessState,
    Spawn,
    Terminate,
    Transition,
)
from roles._leftovers import (
    Guardian,
    ProcessRecord,
    RecordedProcess,
    SupervisorInUse,
    start_time_of,
)

__all__ = [
    "BackoffPolicy",
    "ProcessState",
    "ProcessStatus",
    "Supervisor",
    "SupervisorEvent",
    "SupervisorInUse",
    "SupervisorSnapshot",
    "SupervisorStatistics",
    "describe_exit",
    "open_supervisor",
    "process_group_alive",
]

logger = logging.getLogger(__name__)

InstanceKey = tuple[str, str]


@attrs.frozen
class ProcessStatus:
    """A frozen view of one role instance.

    ``pid`` is set while a process exists; ``run_count`` counts starts; ``failures`` is the
    number of failures in a row; ``last_exit`` is the last exit status (negative: killed by that
    signal); ``last_error`` says why the last start failed; ``since`` is the wall-clock time of
    the last state change; ``delay``/``retry_at`` are the last back-off delay and the wall-clock
    time of the next start while in ``backoff``/``failed``/``waiting``; ``tail`` holds the last
    lines of output (stdout and stderr together, plus ``[stagemesh]`` lines marking starts and
    exits).
    """

    role: str
    uuid: str
    state: ProcessState
    argv: tuple[str, ...]
    pid: int | None
    run_count: int
    failures: int
    last_exit: int | None
    last_error: str | None
    since: float
    delay: float | None
    retry_at: float | None
    tail: tuple[str, ...]

    def to_dict(self, *, tail_lines: int = 0) -> dict[str, Any]:
        """Return a JSON-able dict for the status API, with the last *tail_lines* lines."""
        return {
            "role": self.role,
            "uuid": self.uuid,
            "state": self.state,
            "argv": list(self.argv),
            "pid": self.pid,
            "run_count": self.run_count,
            "failures": self.failures,
            "last_exit": self.last_exit,
            "last_exit_text": describe_exit(self.last_exit),
            "last_error": self.last_error,
            "since": self.since,
            "delay": self.delay,
            "retry_at": self.retry_at,
            "tail": list(self.tail[-tail_lines:]) if tail_lines > 0 else [],
        }


@attrs.frozen
class SupervisorEvent:
    """One state change of one instance.

    ``state`` (new) and ``previous``, the ``pid``, the ``run_count``, the ``exit_status`` that
    caused it (if any), the ``delay`` before the next start (in ``backoff``/``failed``/
    ``waiting``), an ``error`` text, and the wall-clock ``time``.
    """

    role: str
    uuid: str
    state: ProcessState
    previous: ProcessState | None
    pid: int | None
    run_count: int
    exit_status: int | None
    delay: float | None
    error: str | None
    time: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (for events published to the node)."""
        return attrs.asdict(self)


@attrs.frozen
class SupervisorSnapshot:
    """Every instance's :class:`ProcessStatus`, sorted by (role, uuid)."""

    processes: tuple[ProcessStatus, ...]

    def get(self, role: str, uuid: str) -> ProcessStatus | None:
        """Return the status of (*role*, *uuid*), or ``None``."""
        for status in self.processes:
            if (status.role, status.uuid) == (role, uuid):
                return status
        return None


@attrs.frozen
class SupervisorStatistics:
    """Counters: instances by state, events emitted, events dropped (a full subscriber)."""

    states: dict[str, int]
    events_emitted: int
    events_dropped: int


def describe_exit(status: int | None) -> str | None:
    """Return ``"exit 3"`` / ``"killed by SIGKILL"`` for an exit status, ``None`` for none."""
    if status is None:
        return None
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit {status}"


def _spawn_error(spec: ProcessSpec, exc: OSError | ValueError) -> str:
    """Say in one line why *spec* could not be started (for ``last_error``).

    A ``ValueError`` is what the operating system layer raises for a value it cannot pass at
    all (a NUL character in an argument, the environment or a path); validation refuses those
    before they reach here, so this is defence in depth: a failed start, never a crash."""
    program = spec.argv[0]
    if isinstance(exc, ValueError):
        return f"cannot start {program!r}: {exc} (a value the system cannot pass)"
    reason = exc.strerror or str(exc)
    if spec.cwd is not None and exc.filename == spec.cwd:
        return f"cannot start {program!r}: working directory {spec.cwd!r}: {reason}"
    if isinstance(exc, FileNotFoundError) and "/" not in program:
        return f"cannot start {program!r}: {reason} (not found on PATH)"
    return f"cannot start {program!r}: {reason}"


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _group_gone(pgid: int) -> None:
    """Return once process group *pgid* has no live process (polls; no event exists for it)."""
    while True:
        if not process_group_alive(pgid):
            return
        await trio.sleep(0.02)


async def _first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as one of *waits* returns."""
    async with trio.open_nursery() as nursery:

        async def run(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(run, wait)


class _Managed:
    """One instance: its state machine, the wall-clock times of its last change, its output."""

    def __init__(self, role: str, uuid: str, core: InstanceCore, tail_lines: int) -> None:
        self.role = role
        self.uuid = uuid
        self.core = core
        self.wake = trio.Event()
        self.done = trio.Event()
        self.previous: _Managed | None = None
        self.since = time.time()
        self.retry_at: float | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)

    def status(self) -> ProcessStatus:
        core = self.core
        return ProcessStatus(
            role=self.role,
            uuid=self.uuid,
            state=core.state,
            argv=core.spec.argv,
            pid=core.pid,
            run_count=core.run_count,
            failures=core.failures,
            last_exit=core.last_exit,
            last_error=core.last_error,
            since=self.since,
            delay=core.delay,
            retry_at=self.retry_at,
            tail=tuple(self.tail),
        )


class Supervisor:
    """Keeps role instances (child processes) in their wanted state; see the module docstring.

    Made by :func:`open_supervisor`. The control methods (:meth:`set`, :meth:`start`,
    :meth:`stop`, :meth:`restart`, :meth:`remove`) only record what is wanted and return at
    once; use :meth:`wait_for` to wait for the result.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        backoff: BackoffPolicy | None = None,
        tail_lines: int = 200,
        on_event: Callable[[SupervisorEvent], None] | None = None,
        guardian: Guardian | None = None,
        record: ProcessRecord | None = None,
    ) -> None:
        self._nursery = nursery
        self.backoff = backoff or BackoffPolicy()
        self._tail_lines = tail_lines
        self._on_event = on_event
        self._guardian = guardian
        self._record = record
        self._managed: dict[InstanceKey, _Managed] = {}
        self._changed = trio.Event()
        self._subscribers: list[trio.MemorySendChannel[SupervisorEvent]] = []
        self._events_emitted = 0
        self._events_dropped = 0
        self._closing = False

    # --- control ----------------------------------------------------------------------------

    def set(self, role: str, uuid: str, spec: ProcessSpec, *, running: bool = True) -> None:
        """Add the instance, or give it a new spec (restarting it if the spec changed)."""
        if self._closing:
            raise RuntimeError("the supervisor is closing")
        key = (role, uuid)
        current = self._managed.get(key)
        if current is not None and not current.core.removed:
            if current.core.update(trio.current_time(), spec, running=running):
                self._publish(current)
            return
        core = InstanceCore(trio.current_time(), spec, policy=self.backoff, running=running)
        managed = _Managed(role, uuid, core, self._tail_lines)
        managed.previous = current  # a removed copy still stopping: the new one waits for it
        self._managed[key] = managed
        self._publish(managed)
        self._nursery.start_soon(self._run, managed, name=f"role {role}/{uuid}")

    def start(self, role: str, uuid: str) -> None:
        """Run the instance (again) if it is stopped, exited, backing off or failed."""
        managed = self._get(role, uuid)
        managed.core.start(trio.current_time())
        self._publish(managed)

    def stop(self, role: str, uuid: str) -> None:
        """Stop the instance (SIGTERM to its group, SIGKILL after ``stop_grace``); keep it."""
        managed = self._get(role, uuid)
        managed.core.stop(trio.current_time())
        self._publish(managed)

    def restart(self, role: str, uuid: str) -> None:
        """Stop the instance if it runs and start it again at once (not counted a failure)."""
        managed = self._get(role, uuid)
        managed.core.restart(trio.current_time())
        self._publish(managed)

    def remove(self, role: str, uuid: str) -> None:
        """Stop the instance and forget it once it is stopped."""
        managed = self._get(role, uuid)
        managed.core.remove(trio.current_time())
        self._publish(managed)

    def _get(self, role: str, uuid: str) -> _Managed:
        managed = self._managed.get((role, uuid))
        if managed is None or managed.core.removed:
            raise KeyError(f"no role instance {role}/{uuid}")
        return managed

    async def aclose(self) -> None:
        """Stop and forget every instance, and wait until their process groups are gone."""
        self._closing = True
        everything = list(self._managed.values())
        for managed in everything:
            if not managed.core.removed:
                managed.core.remove(trio.current_time())
                self._publish(managed)
        for managed in everything:
            await managed.done.wait()

    # --- views ------------------------------------------------------------------------------

    def keys(self) -> tuple[InstanceKey, ...]:
        """Return the (role, uuid) of every instance not being removed."""
        return tuple(sorted(k for k, m in self._managed.items() if not m.core.removed))

    def status(self, role: str, uuid: str) -> ProcessStatus | None:
        """Return the status of one instance, or ``None`` if the supervisor has none."""
        managed = self._managed.get((role, uuid))
        return None if managed is None else managed.status()

    def spec(self, role: str, uuid: str) -> ProcessSpec | None:
        """Return the spec the instance runs with, or ``None``."""
        managed = self._managed.get((role, uuid))
        return None if managed is None else managed.core.spec

    def snapshot(self) -> SupervisorSnapshot:
        """Return a frozen view of every instance."""
        return SupervisorSnapshot(
            tuple(self._managed[key].status() for key in sorted(self._managed))
        )

    def statistics(self) -> SupervisorStatistics:
        """Return counters: instances by state, events emitted and dropped."""
        states: dict[str, int] = {}
        for managed in self._managed.values():
            states[managed.core.state] = states.get(managed.core.state, 0) + 1
        return SupervisorStatistics(
            states=states,
            events_emitted=self._events_emitted,
            events_dropped=self._events_dropped,
        )

    def tail(self, role: str, uuid: str, lines: int = 100) -> tuple[str, ...]:
        """Return the last *lines* lines of the instance's output."""
        managed = self._managed.get((role, uuid))
        if managed is None or lines <= 0:
            return ()
        return tuple(managed.tail)[-lines:]

    async def wait_for(
        self, role: str, uuid: str, predicate: Callable[[ProcessStatus | None], bool]
    ) -> ProcessStatus | None:
        """Wait until *predicate* holds for the instance's status (``None``: no such instance)
        and return that status; checked on every state change and whenever output arrives.
        Put a deadline around it (``trio.fail_after``)."""
        while True:
            status = self.status(role, uuid)
            if predicate(status):
                return status
            await self._changed.wait()

    def subscribe(self, max_buffer: int = 256) -> trio.MemoryReceiveChannel[SupervisorEvent]:
        """Return a channel that receives every later event; when it is full, events for it are
        dropped (counted in :meth:`statistics`) rather than slowing the supervisor."""
        send, receive = trio.open_memory_channel[SupervisorEvent](max_buffer)
        self._subscribers.append(send)
        return receive

    # --- events -----------------------------------------------------------------------------

    def _publish(self, m: _Managed) -> None:
        """Turn the core's new transitions into events, and wake the instance's runner."""
        for transition in m.core.take_events():
            self._emit(m, transition)
        m.wake.set()

    def _emit(self, m: _Managed, t: Transition) -> None:
        m.since = time.time()
        m.retry_at = None if t.delay is None else m.since + t.delay  # only in a waiting state
        event = SupervisorEvent(
            role=m.role,
            uuid=m.uuid,
            state=t.state,
            previous=t.previous,
            pid=t.pid,
            run_count=t.run_count,
            exit_status=t.exit_status,
            delay=t.delay,
            error=t.error,
            time=m.since,
        )
        level = logging.WARNING if t.state in ("backoff", "failed") else logging.INFO
        logger.log(
            level,
            "role %s/%s: %s -> %s%s%s%s",
            m.role,
            m.uuid,
            t.previous,
            t.state,
            f" ({describe_exit(t.exit_status)})" if t.exit_status is not None else "",
            f" ({t.error})" if t.error is not None else "",
            f" (next start in {t.delay:.2f}s)" if t.delay is not None else "",
        )
        self._events_emitted += 1
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("on_event callback failed")
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self._events_dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(channel)
        self._notify()

    def _notify(self) -> None:
        """Wake :meth:`wait_for` callers (a state changed or output arrived)."""
        self._changed.set()
        self._changed = trio.Event()

    # --- the runner -------------------------------------------------------------------------

    async def _run(self, m: _Managed) -> None:
        """Drive one instance's core until it is finished (removed and stopped)."""
        try:
            if m.previous is not None:
                await m.previous.done.wait()
                m.previous = None
            while not m.core.finished:
                m.wake = trio.Event()
                spawns = [o for o in m.core.take_outputs() if isinstance(o, Spawn)]
                if spawns:
                    await self._run_process(m, spawns[-1].spec)
                    continue
                deadline = m.core.next_deadline()
                if deadline is None:
                    await m.wake.wait()
                    continue
                with trio.move_on_at(deadline):
                    await m.wake.wait()
                m.core.handle_timer(trio.current_time())
                self._publish(m)
        finally:
            m.core.close(trio.current_time())
            self._publish(m)
            if self._managed.get((m.role, m.uuid)) is m:
                del self._managed[(m.role, m.uuid)]
                self._notify()
            m.done.set()

    async def _run_process(self, m: _Managed, spec: ProcessSpec) -> None:
        """Start one process of *m*, watch it until it is gone, and tell the core each step."""
        try:
            for directory in spec.ensure_dirs:
                os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            self._spawn_failed(m, f"cannot create directory {exc.filename}: {exc.strerror}")
            return
        except ValueError as exc:  # a NUL in the path: refused by validation before here
            self._spawn_failed(m, f"cannot create directory {directory!r}: {exc}")
            return
        env = {**os.environ, **spec.env} if spec.env else None
        try:
            process = await trio.lowlevel.open_process(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=spec.cwd,
                env=env,
            )
        except (OSError, ValueError) as exc:
            self._spawn_failed(m, _spawn_error(spec, exc))
            return
        pgid = process.pid
        start_time = start_time_of(pgid)
        try:
            if start_time is not None:
                await self._watch(m, pgid, start_time, spec)
            m.tail.append(f"[stagemesh] run {m.core.run_count + 1} started (pid {pgid})")
            m.core.spawned(trio.current_time(), pgid)
            self._publish(m)
            reader_done = trio.Event()
            async with trio.open_nursery() as nursery:
                assert process.stdout is not None
                nursery.start_soon(self._read_output, m, process.stdout, reader_done)
                await self._wait_exit_or_terminate(m, process)
                await self._clear_group(process, pgid, spec.stop_grace)
                with trio.move_on_after(1.0):
                    await reader_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(spec.stop_grace + 2.0):
                    if process.returncode is None or process_group_alive(pgid):
                        await self._clear_group(process, pgid, spec.stop_grace)
                if process.stdout is not None:
                    await process.stdout.aclose()
                if process.returncode is not None and not process_group_alive(pgid):
                    await self._unwatch(pgid)  # else the guardian and the record keep it
        status = process.returncode
        m.tail.append(f"[stagemesh] run {m.core.run_count} ended: {describe_exit(status)}")
        m.core.exited(trio.current_time(), status)
        self._publish(m)

    def _spawn_failed(self, m: _Managed, error: str) -> None:
        m.tail.append(f"[stagemesh] {error}")
        m.core.spawn_failed(trio.current_time(), error)
        self._publish(m)

    async def _watch(self, m: _Managed, pid: int, start_time: int, spec: ProcessSpec) -> None:
        """Record a new process group where the guardian and the next start find it."""
        if self._guardian is not None:
            await self._guardian.watch(pid, start_time, spec.stop_grace)
        if self._record is not None:
            await self._record.add(
                RecordedProcess(m.role, m.uuid, pid, start_time, spec.stop_grace, spec.argv)
            )

    async def _unwatch(self, pid: int) -> None:
        """The group *pid* is gone: forget it."""
        with trio.move_on_after(5.0):
            if self._guardian is not None:
                await self._guardian.forget(pid)
            if self._record is not None:
                await self._record.remove(pid)

    async def _wait_exit_or_terminate(self, m: _Managed, process: trio.Process) -> None:
        """Return when the core asks to stop the process, or when it exited by itself."""
        while True:
            m.wake = trio.Event()
            if any(isinstance(o, Terminate) for o in m.core.take_outputs()):
                return
            if process.returncode is not None:
                return
            await _first_of(process.wait, m.wake.wait)

    async def _clear_group(self, process: trio.Process, pgid: int, grace: float) -> None:
        """SIGTERM the group, wait up to *grace* for it to be gone, then SIGKILL; reap."""
        if process.returncode is None or process_group_alive(pgid):
            _killpg(pgid, signal.SIGTERM)
            with trio.move_on_after(grace):
                await process.wait()
                await _group_gone(pgid)
            if process.returncode is None or process_group_alive(pgid):
                _killpg(pgid, signal.SIGKILL)  # (not once gone: the number could be reused)
        await process.wait()
        # SIGKILL cannot be ignored; give the kernel a moment to finish the stragglers.
        with trio.move_on_after(1.0):
            await _group_gone(pgid)

    async def _read_output(
        self, m: _Managed, stream: trio.abc.ReceiveStream, done: trio.Event
    ) -> None:
        pending = b""
        try:
            async for chunk in stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > 4096:
                    lines.append(pending)
                    pending = b""
                for line in lines:
                    text = line.decode("utf-8", "replace").rstrip("\r")
                    m.tail.append(text)
                    logger.debug("role %s/%s: %s", m.role, m.uuid, text)
                if lines:
                    self._notify()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            if pending:
                m.tail.append(pending.decode("utf-8", "replace"))
            done.set()


async def _stop_leftovers(leftovers: list[RecordedProcess]) -> None:
    """Stop role processes an earlier run of this station left running (before anything
    starts); a recycled pid (another start time) is left alone."""
    if not leftovers:
        return
    grace = max(r.grace for r in leftovers)
    stopped = await trio.to_thread.run_sync(
        stop_processes, [(r.pid, r.start_time) for r in leftovers], grace
    )
    for r in leftovers:
        if r.pid in stopped:
            logger.warning(
                "stopped role process %s/%s (pid %d, %s) left running by an earlier run",
                r.role,
                r.uuid,
                r.pid,
                " ".join(r.argv)[:200],
            )


@asynccontextmanager
async def open_supervisor(
    *,
    backoff: BackoffPolicy | None = None,
    tail_lines: int = 200,
    on_event: Callable[[SupervisorEvent], None] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
) -> AsyncIterator[Supervisor]:
    """Run a :class:`Supervisor` for the duration of the block.

    With *state_dir*, the running processes are recorded in ``processes.json`` there, and
    processes an earlier run recorded and left running are stopped before this yields (another
    live supervisor using *state_dir* raises :class:`SupervisorInUse`). A guardian process
    stops every process group if this process dies. On exit (normal, error or cancellation)
    every instance is stopped and its process group cleared before this returns.
    """
    record = None if state_dir is None else ProcessRecord(state_dir)
    leftovers = [] if record is None else await trio.to_thread.run_sync(record.acquire)
    try:
        if record is not None:
            await _stop_leftovers(leftovers)
            await record.save()
        guardian = Guardian()
        async with trio.open_nursery() as nursery:
            await nursery.start(guardian.run)
            supervisor = Supervisor(
                nursery,
                backoff=backoff,
                tail_lines=tail_lines,
                on_event=on_event,
                guardian=guardian,
                record=record,
            )
            try:
                yield supervisor
            finally:
                grace = max(
                    (m.core.spec.stop_grace for m in supervisor._managed.values()), default=0.0
                )
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(grace + 5.0):
                        await supervisor.aclose()
                    await guardian.aclose()
                nursery.cancel_scope.cancel()
    finally:
        if record is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(record.release)
