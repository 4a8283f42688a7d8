"""The state machine of one role instance, with no processes, clock or event loop (sans-IO).

:class:`InstanceCore` decides everything about one instance: when to start it, when to stop
it, how long to wait after a failure, when it has failed too often. It never starts a process
or reads a clock: the driver (the trio runner in :mod:`roles._supervisor`, or a test by hand)
tells it what happened, each time with ``now`` (seconds on any monotonic clock), takes the
actions it asks for from :meth:`InstanceCore.take_outputs`, the state changes from
:meth:`InstanceCore.take_events`, and calls :meth:`InstanceCore.handle_timer` at
:meth:`InstanceCore.next_deadline`.

States (:data:`ProcessState`)::

    stopped  --start / created running------------------> starting   (output Spawn)
    starting --spawned--------------------------------> running
    starting --spawn_failed------------------------> backoff | failed
    running  --exited, a failure--------------------> backoff | failed
    running  --exited 0, restart="on-failure"-------> exited
    running  --exited 0, restart="periodic"---------> waiting
    running  --stop / restart / remove / new spec---> stopping   (output Terminate)
    stopping --exited, still wanted (restart)-------> starting
    stopping --exited, not wanted-------------------> stopped
    backoff | failed | waiting --deadline / start / restart / new spec--> starting
    backoff | failed | waiting --stop / remove-------------------------> stopped

In ``starting``, while the driver has not taken the :class:`Spawn` yet, a stop or remove
withdraws it (``stopped``, no process) and a new spec replaces it. Once the driver has taken it,
a stop, restart or new spec is acted on when the driver reports the outcome: a process that
started goes on to ``stopping`` at once (and then ``starting`` again for a restart or new spec).

A **failure** is an exit while the instance should run (for ``restart="always"`` any exit;
otherwise a non-zero exit or a signal) or a command that cannot be started. The delay before
the next start is ``base * factor ** (n - 1)`` for the n-th failure in a row, up to
``max_delay``; a run that lasted ``reset_after`` seconds resets the count (a run that worked
for a while is not "in a row" with the next). ``failure_threshold`` failures within
``failure_window`` seconds make it ``failed``: it is then retried every ``failed_retry``
seconds (EventStreamr: quick retries, then one every 10 s). ``start``, ``restart`` and a new
spec forget the failures (someone changed something; try again at once).

Inputs that make no sense in the current state (``spawned`` when nothing is starting, a control
input after ``remove``) raise :class:`InstanceError`: a bug of the driver, never of a process.
"""

from __future__ import annotations

import collections
from typing import Literal

import attrs

from roles._factories import ProcessSpec

__all__ = [
    "WAITING_STATES",
    "BackoffPolicy",
    "InstanceCore",
    "InstanceError",
    "Output",
    "ProcessState",
    "Spawn",
    "Terminate",
    "Transition",
]

ProcessState = Literal[
    "starting", "running", "stopping", "stopped", "backoff", "failed", "exited", "waiting"
]
#: States in which the instance waits for :meth:`InstanceCore.next_deadline` to start again.
WAITING_STATES: tuple[ProcessState, ...] = ("backoff", "failed", "waiting")
#: States with no process and nothing planned: only an input moves the instance on.
_IDLE_STATES: tuple[ProcessState, ...] = ("stopped", "exited")


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
class Transition:
    """One state change: the new ``state`` and the ``previous`` one, the ``pid`` and
    ``run_count`` at that moment, the ``exit_status`` that caused it (if any), the ``delay``
    before the next start (only in ``backoff``/``failed``/``waiting``), the ``error`` that
    caused it (a command that cannot start) and the driver's ``time``."""

    state: ProcessState
    previous: ProcessState
    pid: int | None
    run_count: int
    exit_status: int | None
    delay: float | None
    error: str | None
    time: float


@attrs.frozen
class Spawn:
    """Start run number ``run`` of the instance with ``spec``; answer with
    :meth:`InstanceCore.spawned` or :meth:`InstanceCore.spawn_failed`."""

    spec: ProcessSpec
    run: int


@attrs.frozen
class Terminate:
    """Stop the process group of ``pid`` (SIGTERM, up to ``grace`` seconds, SIGKILL) and answer
    with :meth:`InstanceCore.exited` once it is gone (withdrawn if the process exited first)."""

    pid: int
    grace: float


#: What the core asks its driver to do.
Output = Spawn | Terminate


class InstanceError(Exception):
    """An input that makes no sense in the instance's current state (a driver bug)."""


class InstanceCore:
    """The state machine of one role instance; see the module docstring.

    Created in state ``stopped``; with ``running=True`` it moves to ``starting`` at once (an
    event and a :class:`Spawn` output wait to be taken).
    """

    def __init__(
        self,
        now: float,
        spec: ProcessSpec,
        *,
        policy: BackoffPolicy | None = None,
        running: bool = True,
    ) -> None:
        self.policy = policy or BackoffPolicy()
        self.spec = spec
        self.state: ProcessState = "stopped"
        #: the process's pid while one exists (``running``/``stopping``)
        self.pid: int | None = None
        #: how many times a process was started
        self.run_count = 0
        #: failures in a row
        self.failures = 0
        #: exit status of the last process (negative: killed by that signal)
        self.last_exit: int | None = None
        #: why the last start failed (``None`` once a process started)
        self.last_error: str | None = None
        #: the driver's time of the last state change
        self.since = now
        #: the last delay chosen before a start (back-off, failed retry or periodic interval)
        self.delay: float | None = None
        self._deadline: float | None = None
        self._failure_times: collections.deque[float] = collections.deque()
        self._started_at = now
        self._want = running
        self._replace = False
        self._removed = False
        self._outputs: list[Output] = []
        self._events: list[Transition] = []
        if running:
            self._begin(now)

    # --- views ------------------------------------------------------------------------------

    @property
    def wanted(self) -> bool:
        """Whether the instance should run (it was not stopped, removed or finished)."""
        return self._want

    @property
    def removed(self) -> bool:
        """Whether :meth:`remove` was called (the instance goes away once it has stopped)."""
        return self._removed

    @property
    def finished(self) -> bool:
        """Removed and without a process: the driver can forget the instance."""
        return self._removed and self.state in _IDLE_STATES

    def next_deadline(self) -> float | None:
        """Return when :meth:`handle_timer` should be called (``None``: no timer)."""
        return self._deadline

    def take_outputs(self) -> list[Output]:
        """Return (and forget) the actions asked of the driver since the last call."""
        outputs, self._outputs = self._outputs, []
        return outputs

    def take_events(self) -> list[Transition]:
        """Return (and forget) the state changes since the last call."""
        events, self._events = self._events, []
        return events

    # --- control inputs ---------------------------------------------------------------------

    def update(self, now: float, spec: ProcessSpec, *, running: bool = True) -> bool:
        """Give the instance *spec*; a different spec replaces a running process (not a
        failure). *running* also asks it to run if it does not (``running=False`` never
        stops it). Return whether anything changed."""
        self._check_control()
        changed = False
        if spec != self.spec:
            self.spec = spec
            self._forget_failures()
            if self.state == "starting":
                if self._withdraw_spawn():  # not begun: start with the new spec instead
                    self._outputs.append(Spawn(spec, self.run_count + 1))
                else:  # being started: replace the process once it runs
                    self._replace = True
            elif self.state == "running":
                self._terminate(now)
            changed = True
        if running and not self._want:
            self._want = True
            changed = True
        if changed and self._want and self.state in (*_IDLE_STATES, *WAITING_STATES):
            self._begin(now)
        return changed

    def start(self, now: float) -> None:
        """Run the instance (again) if it is stopped, exited, backing off, failed or waiting:
        at once, with the failures forgotten."""
        self._check_control()
        if self._want and self.state in ("starting", "running"):
            return
        self._want = True
        self._forget_failures()
        if self.state in (*_IDLE_STATES, *WAITING_STATES):
            self._begin(now)
        # starting: it goes on running; stopping: it starts again once the process is gone.

    def stop(self, now: float) -> None:
        """Stop the instance and keep it stopped until :meth:`start` or :meth:`restart`."""
        self._check_control()
        self._stand_down(now)

    def restart(self, now: float) -> None:
        """Stop the process if there is one and start again at once (not a failure)."""
        self._check_control()
        self._want = True
        self._forget_failures()
        if self.state == "starting" and not self._has_pending_spawn():
            self._replace = True  # the process being started is replaced once it runs
        elif self.state == "running":
            self._terminate(now)
        elif self.state in (*_IDLE_STATES, *WAITING_STATES):
            self._begin(now)

    def remove(self, now: float) -> None:
        """Stop the instance for good; it is :attr:`finished` once no process is left."""
        self._check_control()
        self._removed = True
        self._stand_down(now)

    # --- process inputs ---------------------------------------------------------------------

    def spawned(self, now: float, pid: int) -> None:
        """The process of the :class:`Spawn` asked for started as *pid*."""
        self._expect("spawned", "starting")
        self.pid = pid
        self.run_count += 1
        self.last_error = None
        self._started_at = now
        self._enter(now, "running")
        if not self._want or self._replace:
            self._replace = False
            self._terminate(now)

    def spawn_failed(self, now: float, error: str) -> None:
        """The process of the :class:`Spawn` asked for could not be started: *error* says why
        (a failure, kept as :attr:`last_error`)."""
        self._expect("spawn_failed", "starting")
        self.pid = None
        self.last_error = error
        if not self._want:
            self._enter(now, "stopped", error=error)
            return
        self._fail(now, None, error, run_time=0.0)
        if self._replace:
            self._begin(now)

    def exited(self, now: float, status: int | None) -> None:
        """The process (and its whole group) is gone; *status* is its exit status (negative:
        killed by that signal; ``None`` if unknown)."""
        self._expect("exited", "running", "stopping")
        self.pid = None
        self.last_exit = status
        # A Terminate not taken yet is moot (and its pid may soon name another process).
        self._outputs = [o for o in self._outputs if not isinstance(o, Terminate)]
        if self.state == "stopping":
            if self._want:
                self._begin(now)
            else:
                self._enter(now, "stopped", exit_status=status)
            return
        clean = status == 0
        if clean and self.spec.restart == "on-failure":
            self._want = False
            self.failures = 0
            self._enter(now, "exited", exit_status=status)
        elif clean and self.spec.restart == "periodic":
            self.failures = 0
            self.delay = self.spec.interval
            self._deadline = now + self.delay
            self._enter(now, "waiting", exit_status=status)
        else:
            self._fail(now, status, None, run_time=now - self._started_at)

    def handle_timer(self, now: float) -> None:
        """Start again if the deadline of ``backoff``/``failed``/``waiting`` has come."""
        if self._deadline is not None and now >= self._deadline:
            self._begin(now)

    def close(self, now: float) -> None:
        """The driver stops driving (its process, if any, is gone): end ``stopped``, removed."""
        self._removed = True
        self._want = False
        self._replace = False
        self.pid = None
        self._outputs = []
        if self.state not in _IDLE_STATES:
            self._enter(now, "stopped")

    # --- internals ---------------------------------------------------------------------------

    def _check_control(self) -> None:
        if self._removed:
            raise InstanceError("the instance was removed")

    def _expect(self, what: str, *states: ProcessState) -> None:
        if self.state not in states:
            raise InstanceError(f"{what} in state {self.state!r} (expected {' or '.join(states)})")

    def _stand_down(self, now: float) -> None:
        """No longer wanted: stop the process, or cancel the start that is planned."""
        self._want = False
        self._replace = False
        if self.state == "running":
            self._terminate(now)
        elif self.state in WAITING_STATES or self._withdraw_spawn():
            self._enter(now, "stopped")
        # starting (spawn taken): stopped once the outcome is known; stopping: on its way.

    def _has_pending_spawn(self) -> bool:
        """Whether a :class:`Spawn` waits to be taken (the driver has not begun it)."""
        return any(isinstance(output, Spawn) for output in self._outputs)

    def _withdraw_spawn(self) -> bool:
        """Take back a :class:`Spawn` the driver has not taken yet; return whether there was
        one (then no process will be started for it)."""
        if self.state != "starting" or not self._has_pending_spawn():
            return False
        self._outputs = [output for output in self._outputs if not isinstance(output, Spawn)]
        return True

    def _forget_failures(self) -> None:
        self.failures = 0
        self._failure_times.clear()

    def _begin(self, now: float) -> None:
        self._replace = False
        self.pid = None
        self._enter(now, "starting")
        self._outputs.append(Spawn(self.spec, self.run_count + 1))

    def _terminate(self, now: float) -> None:
        assert self.pid is not None
        self._enter(now, "stopping")
        self._outputs.append(Terminate(self.pid, self.spec.stop_grace))

    def _fail(self, now: float, status: int | None, error: str | None, *, run_time: float) -> None:
        if run_time >= self.policy.reset_after:
            self.failures = 0
        self.failures += 1
        self._failure_times.append(now)
        while self._failure_times and self._failure_times[0] < now - self.policy.failure_window:
            self._failure_times.popleft()
        if len(self._failure_times) >= self.policy.failure_threshold:
            state: ProcessState = "failed"
            self.delay = self.policy.failed_retry
        else:
            state = "backoff"
            self.delay = self.policy.delay(self.failures)
        self._deadline = now + self.delay
        self._enter(now, state, exit_status=status, error=error)

    def _enter(
        self,
        now: float,
        state: ProcessState,
        *,
        exit_status: int | None = None,
        error: str | None = None,
    ) -> None:
        previous = self.state
        self.state = state
        self.since = now
        if state not in WAITING_STATES:
            self._deadline = None
        self._events.append(
            Transition(
                state=state,
                previous=previous,
                pid=self.pid,
                run_count=self.run_count,
                exit_status=exit_status,
                delay=self.delay if state in WAITING_STATES else None,
                error=error,
                time=now,
            )
        )
