"""The process supervisor: every role instance is a child process kept in the wanted state.

Each instance runs in its own session (``start_new_session=True``), so its process group holds
the command and everything it starts; stopping sends SIGTERM to the whole group, waits
``stop_grace`` seconds for the group to be gone, then sends SIGKILL. The group is also cleared
when the command exits by itself, and when the supervisor's nursery exits (also on
cancellation), so no orphan survives the supervisor.

States (:data:`ProcessState`)::

    stopped  --start-->        starting --spawned--> running
    starting --spawn error-->  backoff  (or failed)
    running  --exits, should run-->  backoff --delay--> starting
                                     failed  --failed_retry--> starting   (5 failures in window)
    running  --stop/remove-->  stopping --> stopped
    running  --exit 0, restart="on-failure"-->  exited
    running  --exit 0, restart="periodic"-->    waiting --interval--> starting

A failure is an exit while the instance should run (for ``restart="always"`` any exit; otherwise
a non-zero exit or a signal) or a command that cannot be started. The delay before the next
start grows: ``base * factor ** (consecutive_failures - 1)`` up to ``max_delay``; a run that
lasted ``reset_after`` seconds resets the count. ``failure_threshold`` failures within
``failure_window`` seconds mark the instance ``failed``; it is then retried every
``failed_retry`` seconds (EventStreamr: quick retries, then one every 10 s).

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
from typing import Any, Literal

import attrs
import trio

from roles._factories import ProcessSpec

__all__ = [
    "BackoffPolicy",
    "ProcessState",
    "ProcessStatus",
    "Supervisor",
    "SupervisorEvent",
    "SupervisorSnapshot",
    "SupervisorStatistics",
    "describe_exit",
    "open_supervisor",
    "process_group_alive",
]

logger = logging.getLogger(__name__)

ProcessState = Literal[
    "starting", "running", "stopping", "stopped", "backoff", "failed", "exited", "waiting"
]
InstanceKey = tuple[str, str]


@attrs.frozen
class BackoffPolicy:
    """When to start a failed instance again (all durations in seconds); see the module doc."""

    base: float = 1.0
    factor: float = 2.0
    max_delay: float = 30.0
    failure_threshold: int = 5
    failure_window: float = 60.0
    failed_retry: float = 60.0
    reset_after: float = 10.0

    def delay(self, consecutive_failures: int) -> float:
        """Return the delay after the *consecutive_failures*-th failure in a row (1-based)."""
        exponent = max(consecutive_failures - 1, 0)
        if exponent > 64:
            return self.max_delay
        return min(self.base * self.factor**exponent, self.max_delay)


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


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def process_group_alive(pgid: int) -> bool:
    """Return whether any live (not zombie) process is in process group *pgid*.

    Zombies are ignored: they hold nothing and disappear once their parent (init) reaps them.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


async def _group_gone(pgid: int) -> None:
    """Return once process group *pgid* has no live process (polls; no event exists for it)."""
    while True:
        if not process_group_alive(pgid):
            return
        await trio.sleep(0.02)


class _Managed:
    """The supervisor's mutable record of one instance (only touched from trio tasks)."""

    def __init__(self, role: str, uuid: str, spec: ProcessSpec, tail_lines: int) -> None:
        self.role = role
        self.uuid = uuid
        self.spec = spec
        self.want_running = True
        self.restart_pending = False
        self.removed = False
        self.wake = trio.Event()
        self.done = trio.Event()
        self.previous: _Managed | None = None
        self.state: ProcessState = "stopped"
        self.pid: int | None = None
        self.run_count = 0
        self.failures = 0
        self.failure_times: collections.deque[float] = collections.deque()
        self.last_exit: int | None = None
        self.last_error: str | None = None
        self.since = time.time()
        self.delay: float | None = None
        self.retry_at: float | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)

    def poke(self) -> None:
        self.wake.set()

    def status(self) -> ProcessStatus:
        return ProcessStatus(
            role=self.role,
            uuid=self.uuid,
            state=self.state,
            argv=self.spec.argv,
            pid=self.pid,
            run_count=self.run_count,
            failures=self.failures,
            last_exit=self.last_exit,
            last_error=self.last_error,
            since=self.since,
            delay=self.delay,
            retry_at=self.retry_at,
            tail=tuple(self.tail),
        )


async def _first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as one of *waits* returns."""
    async with trio.open_nursery() as nursery:

        async def run(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(run, wait)


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
    ) -> None:
        self._nursery = nursery
        self.backoff = backoff or BackoffPolicy()
        self._tail_lines = tail_lines
        self._on_event = on_event
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
        if current is not None and not current.removed:
            changed = False
            if current.spec != spec:
                current.spec = spec
                current.failures = 0
                current.failure_times.clear()
                current.restart_pending = True
                changed = True
            if running and not current.want_running:
                current.want_running = True
                changed = True
            if changed:
                current.poke()
            return
        managed = _Managed(role, uuid, spec, self._tail_lines)
        managed.want_running = running
        managed.previous = current
        self._managed[key] = managed
        self._nursery.start_soon(self._run, managed, name=f"role {role}/{uuid}")

    def start(self, role: str, uuid: str) -> None:
        """Run the instance (again) if it is stopped, exited, backing off or failed."""
        managed = self._get(role, uuid)
        if managed.want_running and managed.state in ("starting", "running"):
            return
        managed.want_running = True
        managed.failures = 0
        managed.failure_times.clear()
        managed.poke()

    def stop(self, role: str, uuid: str) -> None:
        """Stop the instance (SIGTERM to its group, SIGKILL after ``stop_grace``); keep it."""
        managed = self._get(role, uuid)
        managed.want_running = False
        managed.poke()

    def restart(self, role: str, uuid: str) -> None:
        """Stop the instance if it runs and start it again at once (not counted a failure)."""
        managed = self._get(role, uuid)
        managed.want_running = True
        managed.restart_pending = True
        managed.failures = 0
        managed.failure_times.clear()
        managed.poke()

    def remove(self, role: str, uuid: str) -> None:
        """Stop the instance and forget it once it is stopped."""
        managed = self._get(role, uuid)
        managed.removed = True
        managed.want_running = False
        managed.poke()

    def _get(self, role: str, uuid: str) -> _Managed:
        managed = self._managed.get((role, uuid))
        if managed is None or managed.removed:
            raise KeyError(f"no role instance {role}/{uuid}")
        return managed

    async def aclose(self) -> None:
        """Stop and forget every instance, and wait until their process groups are gone."""
        self._closing = True
        everything = list(self._managed.values())
        for managed in everything:
            managed.removed = True
            managed.want_running = False
            managed.poke()
        for managed in everything:
            await managed.done.wait()

    # --- views ------------------------------------------------------------------------------

    def keys(self) -> tuple[InstanceKey, ...]:
        """Return the (role, uuid) of every instance not being removed."""
        return tuple(sorted(k for k, m in self._managed.items() if not m.removed))

    def status(self, role: str, uuid: str) -> ProcessStatus | None:
        """Return the status of one instance, or ``None`` if the supervisor has none."""
        managed = self._managed.get((role, uuid))
        return None if managed is None else managed.status()

    def spec(self, role: str, uuid: str) -> ProcessSpec | None:
        """Return the spec the instance runs with, or ``None``."""
        managed = self._managed.get((role, uuid))
        return None if managed is None else managed.spec

    def snapshot(self) -> SupervisorSnapshot:
        """Return a frozen view of every instance."""
        return SupervisorSnapshot(
            tuple(self._managed[key].status() for key in sorted(self._managed))
        )

    def statistics(self) -> SupervisorStatistics:
        """Return counters: instances by state, events emitted and dropped."""
        states: dict[str, int] = {}
        for managed in self._managed.values():
            states[managed.state] = states.get(managed.state, 0) + 1
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

    # --- the runner -------------------------------------------------------------------------

    def _transition(
        self,
        m: _Managed,
        state: ProcessState,
        *,
        exit_status: int | None = None,
        error: str | None = None,
    ) -> None:
        previous = m.state
        m.state = state
        m.since = time.time()
        if state not in ("backoff", "failed", "waiting"):
            m.retry_at = None
        event = SupervisorEvent(
            role=m.role,
            uuid=m.uuid,
            state=state,
            previous=previous,
            pid=m.pid,
            run_count=m.run_count,
            exit_status=exit_status,
            delay=m.delay if state in ("backoff", "failed", "waiting") else None,
            error=error,
            time=m.since,
        )
        level = logging.WARNING if state in ("backoff", "failed") else logging.INFO
        logger.log(
            level,
            "role %s/%s: %s -> %s%s%s",
            m.role,
            m.uuid,
            previous,
            state,
            f" ({describe_exit(exit_status)})" if exit_status is not None else "",
            f" (next start in {event.delay:.2f}s)" if event.delay is not None else "",
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

    async def _run(self, m: _Managed) -> None:
        try:
            if m.previous is not None:
                await m.previous.done.wait()
                m.previous = None
            while not m.removed:
                m.wake = trio.Event()
                if not m.want_running:
                    if m.state not in ("stopped", "exited"):
                        self._transition(m, "stopped")
                    await m.wake.wait()
                    continue
                m.restart_pending = False
                spec = m.spec
                started = trio.current_time()
                outcome = await self._run_once(m, spec)
                if outcome is None:
                    continue  # interrupted by stop/restart/remove/new spec: decide again
                exit_status, error = outcome
                await self._after_exit(m, spec, exit_status, error, trio.current_time() - started)
        finally:
            if m.state not in ("stopped", "exited"):
                self._transition(m, "stopped")
            if self._managed.get((m.role, m.uuid)) is m:
                del self._managed[(m.role, m.uuid)]
                self._notify()
            m.done.set()

    async def _after_exit(
        self,
        m: _Managed,
        spec: ProcessSpec,
        exit_status: int | None,
        error: str | None,
        duration: float,
    ) -> None:
        clean = exit_status == 0 and error is None
        if clean and spec.restart == "on-failure":
            m.want_running = False
            m.failures = 0
            self._transition(m, "exited", exit_status=exit_status)
            return
        if clean and spec.restart == "periodic":
            m.failures = 0
            m.delay = spec.interval
            state: ProcessState = "waiting"
        else:
            now = trio.current_time()
            if duration >= self.backoff.reset_after:
                m.failures = 0
            m.failures += 1
            m.failure_times.append(now)
            while m.failure_times and m.failure_times[0] < now - self.backoff.failure_window:
                m.failure_times.popleft()
            if len(m.failure_times) >= self.backoff.failure_threshold:
                state = "failed"
                m.delay = self.backoff.failed_retry
            else:
                state = "backoff"
                m.delay = self.backoff.delay(m.failures)
        m.retry_at = time.time() + m.delay
        self._transition(m, state, exit_status=exit_status, error=error)
        with trio.move_on_after(m.delay):
            await m.wake.wait()

    async def _run_once(
        self, m: _Managed, spec: ProcessSpec
    ) -> tuple[int | None, str | None] | None:
        """Start the process and wait for it. Return ``None`` if interrupted (stop, restart,
        remove, new spec), else ``(exit_status, error)`` (``error`` when it could not start)."""
        m.pid = None
        self._transition(m, "starting")
        try:
            for directory in spec.ensure_dirs:
                os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            return self._spawn_failed(m, f"cannot create directory {exc.filename}: {exc.strerror}")
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
        except OSError as exc:
            return self._spawn_failed(m, f"cannot start {spec.argv[0]!r}: {exc.strerror or exc}")
        pgid = process.pid
        m.pid = process.pid
        m.run_count += 1
        m.last_error = None
        m.tail.append(f"[stagemesh] run {m.run_count} started (pid {process.pid})")
        self._transition(m, "running")
        reader_done = trio.Event()
        interrupted = False
        try:
            async with trio.open_nursery() as nursery:
                assert process.stdout is not None
                nursery.start_soon(self._read_output, m, process.stdout, reader_done)
                interrupted = await self._wait_exit_or_wake(m, process)
                if interrupted:
                    self._transition(m, "stopping")
                await self._clear_group(process, pgid, spec.stop_grace)
                with trio.move_on_after(1.0):
                    await reader_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(spec.stop_grace + 2.0):
                if process.returncode is None or process_group_alive(pgid):
                    await self._clear_group(process, pgid, spec.stop_grace)
                if process.stdout is not None:
                    await process.stdout.aclose()
        status = process.returncode
        m.pid = None
        m.last_exit = status
        m.tail.append(f"[stagemesh] run {m.run_count} ended: {describe_exit(status)}")
        if interrupted:
            return None
        return (status, None)

    def _spawn_failed(self, m: _Managed, error: str) -> tuple[int | None, str | None]:
        m.last_error = error
        m.tail.append(f"[stagemesh] {error}")
        return (None, error)

    async def _wait_exit_or_wake(self, m: _Managed, process: trio.Process) -> bool:
        """Return ``True`` if the process must stop (stop/restart/remove), ``False`` if it
        exited by itself."""
        while True:
            if m.removed or not m.want_running or m.restart_pending:
                return True
            if process.returncode is not None:
                return False
            await _first_of(process.wait, m.wake.wait)
            if m.wake.is_set():
                m.wake = trio.Event()

    async def _clear_group(self, process: trio.Process, pgid: int, grace: float) -> None:
        """SIGTERM the group, wait up to *grace* for it to be gone, then SIGKILL; reap."""
        if process.returncode is None or process_group_alive(pgid):
            _killpg(pgid, signal.SIGTERM)
            with trio.move_on_after(grace):
                await process.wait()
                await _group_gone(pgid)
            _killpg(pgid, signal.SIGKILL)
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


@asynccontextmanager
async def open_supervisor(
    *,
    backoff: BackoffPolicy | None = None,
    tail_lines: int = 200,
    on_event: Callable[[SupervisorEvent], None] | None = None,
) -> AsyncIterator[Supervisor]:
    """Run a :class:`Supervisor` for the duration of the block.

    On exit (normal, error or cancellation) every instance is stopped and its process group
    cleared before this returns.
    """
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, backoff=backoff, tail_lines=tail_lines, on_event=on_event)
        try:
            yield supervisor
        finally:
            grace = max((m.spec.stop_grace for m in supervisor._managed.values()), default=0.0)
            with trio.CancelScope(shield=True), trio.move_on_after(grace + 5.0):
                await supervisor.aclose()
            nursery.cancel_scope.cancel()
