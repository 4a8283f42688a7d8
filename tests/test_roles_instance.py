"""The instance state machine (roles/_instance.py) driven by hand: no processes, no clock, no
event loop. Every ``now`` is given explicitly, so back-off and windows are exact."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from roles import BackoffPolicy, ProcessSpec
from roles._instance import (
    InstanceCore,
    InstanceError,
    Spawn,
    Terminate,
    Transition,
)

POLICY = BackoffPolicy(
    base=1.0,
    factor=2.0,
    max_delay=10.0,
    failure_threshold=5,
    failure_window=60.0,
    failed_retry=30.0,
    reset_after=10.0,
)
SPEC = ProcessSpec(argv=["sleep", "60"], stop_grace=2.0)
OTHER = ProcessSpec(argv=["sleep", "61"], stop_grace=3.0)


def core(now: float = 0.0, spec: ProcessSpec = SPEC, *, running: bool = True) -> InstanceCore:
    return InstanceCore(now, spec, policy=POLICY, running=running)


def states(c: InstanceCore) -> list[str]:
    """The states entered since the last call."""
    return [t.state for t in c.take_events()]


def run(c: InstanceCore, now: float, pid: int) -> None:
    """Take the Spawn and report the process started as *pid*."""
    outputs = c.take_outputs()
    assert [type(o) for o in outputs] == [Spawn], outputs
    c.spawned(now, pid)


def crash(c: InstanceCore, now: float, pid: int, status: int = 1, *, after: float = 0.1) -> None:
    """Start a process at *now* that fails *after* seconds later."""
    run(c, now, pid)
    c.exited(now + after, status)


# --- creation and the happy path ---------------------------------------------------------------


def test_created_running_asks_for_a_spawn() -> None:
    c = core(5.0)
    assert c.state == "starting"
    [event] = c.take_events()
    assert event == Transition(
        state="starting",
        previous="stopped",
        pid=None,
        run_count=0,
        exit_status=None,
        delay=None,
        error=None,
        time=5.0,
    )
    assert c.take_outputs() == [Spawn(SPEC, run=1)]
    assert c.take_outputs() == []  # outputs are taken once
    c.spawned(5.1, 100)
    assert (c.state, c.pid, c.run_count, c.since) == ("running", 100, 1, 5.1)
    assert states(c) == ["running"]
    assert c.next_deadline() is None


def test_created_held_does_nothing_until_started() -> None:
    c = core(running=False)
    assert c.state == "stopped" and not c.wanted
    assert c.take_events() == [] and c.take_outputs() == []
    c.start(1.0)
    assert states(c) == ["starting"]
    assert c.take_outputs() == [Spawn(SPEC, run=1)]


# --- failures and back-off ---------------------------------------------------------------------


def test_backoff_grows_then_fails_within_the_window_then_retries_slowly() -> None:
    c = core(0.0)
    now = 0.0
    delays = []
    for pid in range(1, 6):
        crash(c, now, pid, status=3)
        [event] = c.take_events()[-1:]
        delays.append(event.delay)
        assert event.exit_status == 3
        deadline = c.next_deadline()
        assert deadline is not None
        c.handle_timer(deadline - 0.01)  # too early: nothing
        assert c.state in ("backoff", "failed")
        now = deadline
        if c.state == "backoff":
            c.handle_timer(now)
            assert c.state == "starting"
    assert delays == [1.0, 2.0, 4.0, 8.0, 30.0]  # the 5th within 60 s: failed, retry in 30 s
    assert c.state == "failed" and c.failures == 5 and c.last_exit == 3
    c.handle_timer(now)
    crash(c, now, 6)
    assert c.state == "failed"  # still 5 failures within the window
    assert c.delay == 30.0


def test_backoff_is_capped_at_max_delay() -> None:
    policy = BackoffPolicy(base=1.0, factor=3.0, max_delay=5.0, failure_threshold=100)
    c = InstanceCore(0.0, SPEC, policy=policy)
    now = 0.0
    delays = []
    for pid in range(1, 6):
        crash(c, now, pid)
        assert c.delay is not None
        delays.append(c.delay)
        now += 100.0
        c.handle_timer(now)
    assert delays == [1.0, 3.0, 5.0, 5.0, 5.0]
    assert policy.delay(10_000) == 5.0  # no overflow for a huge count


def test_a_long_run_resets_the_failure_count() -> None:
    c = core(0.0)
    crash(c, 0.0, 1)
    c.handle_timer(1.1)
    crash(c, 1.1, 2)
    assert c.failures == 2 and c.delay == 2.0
    c.handle_timer(10.0)
    crash(c, 10.0, 3, after=POLICY.reset_after)  # ran 10 s: not "in a row"
    assert c.failures == 1 and c.delay == 1.0


def test_failures_outside_the_window_do_not_mark_it_failed() -> None:
    c = core(0.0)
    now = 0.0
    for pid in range(1, 11):
        crash(c, now, pid, after=20.0)  # each run lasts 20 s: 3 failures per 60 s window
        assert c.state == "backoff"
        now = c.next_deadline() or now
        c.handle_timer(now)


def test_a_command_that_cannot_start_backs_off_with_its_error() -> None:
    c = core(0.0)
    c.take_outputs()
    c.take_events()
    c.spawn_failed(0.5, "cannot start 'ffmpeg': No such file or directory (not found on PATH)")
    [event] = c.take_events()
    assert event.state == "backoff" and event.error is not None and "ffmpeg" in event.error
    assert c.last_error == event.error and c.run_count == 0 and c.failures == 1
    c.handle_timer(1.5)
    run(c, 1.5, 7)
    assert c.last_error is None  # a process started: the error is history


def test_exits_by_restart_policy() -> None:
    always = core(0.0)
    crash(always, 0.0, 1, status=0)
    assert always.state == "backoff"  # a service that exits is a failure, even with 0

    once = core(0.0, ProcessSpec(argv=["true"], restart="on-failure"))
    crash(once, 0.0, 1, status=0)
    assert (once.state, once.wanted, once.failures) == ("exited", False, 0)
    assert once.next_deadline() is None
    once.start(1.0)
    run(once, 1.0, 2)
    once.exited(1.2, 2)
    assert once.state == "backoff"  # a non-zero exit is a failure

    periodic = core(0.0, ProcessSpec(argv=["sync"], restart="periodic", interval=60.0))
    crash(periodic, 0.0, 1, status=0, after=5.0)
    assert (periodic.state, periodic.delay, periodic.failures) == ("waiting", 60.0, 0)
    assert periodic.next_deadline() == 65.0
    periodic.handle_timer(65.0)
    assert periodic.take_outputs() == [Spawn(periodic.spec, run=2)]
    periodic.spawned(65.0, 2)
    periodic.exited(66.0, -9)
    assert periodic.state == "backoff"  # a signal is a failure
    periodic.start(66.5)  # start in a waiting state: at once, failures forgotten
    assert periodic.state == "starting" and periodic.failures == 0


# --- stop, start, restart, new spec -------------------------------------------------------------


def test_stop_in_running_terminates_and_is_not_a_failure() -> None:
    c = core(0.0)
    run(c, 0.0, 42)
    c.take_events()
    c.stop(1.0)
    assert c.state == "stopping"
    assert c.take_outputs() == [Terminate(42, SPEC.stop_grace)]
    c.exited(1.5, -15)
    assert states(c) == ["stopping", "stopped"]
    assert (c.pid, c.last_exit, c.failures, c.wanted) == (None, -15, 0, False)
    c.start(2.0)
    assert c.take_outputs() == [Spawn(SPEC, run=2)]


def test_stop_during_backoff_cancels_the_timer_and_start_runs_at_once() -> None:
    c = core(0.0)
    crash(c, 0.0, 1)
    crash_deadline = c.next_deadline()
    assert crash_deadline is not None
    c.take_events()
    c.stop(0.5)
    assert states(c) == ["stopped"] and c.next_deadline() is None
    c.handle_timer(crash_deadline + 10)
    assert c.state == "stopped" and c.take_outputs() == []
    c.start(20.0)
    assert c.state == "starting" and c.failures == 0
    assert c.take_outputs() == [Spawn(SPEC, run=2)]


def test_restart_replaces_the_process_without_counting_a_failure() -> None:
    c = core(0.0)
    crash(c, 0.0, 1)
    c.handle_timer(1.1)
    run(c, 1.1, 2)
    c.take_events()
    c.restart(3.0)
    assert c.take_outputs() == [Terminate(2, SPEC.stop_grace)]
    c.exited(3.2, -15)
    assert states(c) == ["stopping", "starting"]  # straight back: no "stopped" in between
    assert c.failures == 0
    run(c, 3.3, 3)
    assert c.run_count == 3


def test_restart_during_backoff_or_when_stopped_starts_at_once() -> None:
    c = core(0.0)
    crash(c, 0.0, 1)
    c.restart(0.2)
    assert c.state == "starting" and c.failures == 0
    held = core(running=False)
    held.restart(1.0)
    assert held.state == "starting" and held.wanted


def test_restart_while_starting_replaces_the_new_process_once_it_runs() -> None:
    c = core(0.0)
    assert c.take_outputs() == [Spawn(SPEC, run=1)]  # the driver is starting it
    c.restart(0.1)
    assert c.state == "starting" and c.take_outputs() == []
    c.spawned(0.2, 10)
    assert c.state == "stopping"
    assert c.take_outputs() == [Terminate(10, SPEC.stop_grace)]
    c.exited(0.3, -15)
    assert c.state == "starting"
    assert c.take_outputs() == [Spawn(SPEC, run=2)]


def test_restart_before_the_spawn_is_taken_changes_nothing() -> None:
    c = core(0.0)
    c.restart(0.1)  # the process is not started yet: it will be a fresh one anyway
    assert c.take_outputs() == [Spawn(SPEC, run=1)]
    c.spawned(0.2, 10)
    assert c.state == "running"


def test_stop_while_starting() -> None:
    # Not taken yet: withdrawn, no process at all.
    c = core(0.0)
    c.stop(0.1)
    assert states(c) == ["starting", "stopped"]
    assert c.take_outputs() == []
    # Taken: the process is stopped as soon as it runs.
    c = core(0.0)
    c.take_outputs()
    c.stop(0.1)
    assert c.state == "starting"
    c.spawned(0.2, 11)
    assert c.state == "stopping" and c.take_outputs() == [Terminate(11, SPEC.stop_grace)]
    c.exited(0.3, -15)
    assert c.state == "stopped"
    # Taken and the spawn fails: stopped, the error kept, not a failure.
    c = core(0.0)
    c.take_outputs()
    c.stop(0.1)
    c.spawn_failed(0.2, "cannot start 'x': Permission denied")
    assert (c.state, c.failures, c.last_error) == (
        "stopped",
        0,
        "cannot start 'x': Permission denied",
    )


def test_start_after_stop_while_stopping_starts_again_when_the_process_is_gone() -> None:
    c = core(0.0)
    run(c, 0.0, 1)
    c.stop(1.0)
    c.start(1.1)
    assert c.state == "stopping"
    c.exited(1.2, -15)
    assert c.state == "starting"


def test_new_spec() -> None:
    c = core(0.0)
    run(c, 0.0, 1)
    c.take_events()
    assert not c.update(1.0, SPEC)  # the same spec: nothing
    assert c.take_events() == [] and c.take_outputs() == []
    assert c.update(1.0, OTHER)
    assert c.take_outputs() == [Terminate(1, OTHER.stop_grace)]
    c.exited(1.5, -15)
    assert c.take_outputs() == [Spawn(OTHER, run=2)]
    assert states(c) == ["stopping", "starting"]
    # A new spec before the spawn is taken replaces the spawn.
    d = core(0.0)
    d.update(0.1, OTHER)
    assert d.take_outputs() == [Spawn(OTHER, run=1)]
    # A new spec in back-off starts at once with the failures forgotten.
    e = core(0.0)
    crash(e, 0.0, 1)
    e.update(0.5, OTHER)
    assert (e.state, e.failures) == ("starting", 0)
    # running=True starts an exited or held instance; running=False never stops one.
    f = core(running=False)
    assert f.update(0.0, SPEC, running=True) and f.state == "starting"
    g = core(0.0)
    run(g, 0.0, 1)
    assert not g.update(0.5, SPEC, running=False) and g.state == "running"


def test_new_spec_while_starting_replaces_the_started_process() -> None:
    c = core(0.0)
    c.take_outputs()
    c.update(0.1, OTHER)
    c.spawned(0.2, 5)  # started with SPEC
    assert c.take_outputs() == [Terminate(5, OTHER.stop_grace)]
    c.exited(0.3, -15)
    assert c.take_outputs() == [Spawn(OTHER, run=2)]


def test_new_spec_after_a_failed_spawn_started_with_the_old_one_starts_again_at_once() -> None:
    c = core(0.0)
    c.take_outputs()
    c.update(0.1, OTHER)
    c.spawn_failed(0.2, "cannot start 'sleep': No such file or directory")
    assert states(c)[-2:] == ["backoff", "starting"]
    assert c.take_outputs() == [Spawn(OTHER, run=1)]


# --- removal and misuse ------------------------------------------------------------------------


def test_remove() -> None:
    running = core(0.0)
    run(running, 0.0, 1)
    running.remove(1.0)
    assert running.take_outputs() == [Terminate(1, SPEC.stop_grace)]
    assert not running.finished
    running.exited(1.1, -15)
    assert running.state == "stopped" and running.finished

    backing_off = core(0.0)
    crash(backing_off, 0.0, 1)
    backing_off.remove(0.5)
    assert backing_off.finished and backing_off.next_deadline() is None

    exited = core(0.0, ProcessSpec(argv=["true"], restart="on-failure"))
    crash(exited, 0.0, 1, status=0)
    exited.take_events()
    exited.remove(1.0)
    assert exited.finished and exited.take_events() == []  # nothing to stop: no event

    for control in ("start", "stop", "restart", "remove"):
        with pytest.raises(InstanceError):
            getattr(exited, control)(2.0)
    with pytest.raises(InstanceError):
        exited.update(2.0, OTHER)


def test_process_inputs_in_the_wrong_state_are_refused() -> None:
    c = core(running=False)
    with pytest.raises(InstanceError, match="spawned in state 'stopped'"):
        c.spawned(0.0, 1)
    with pytest.raises(InstanceError):
        c.exited(0.0, 0)
    with pytest.raises(InstanceError):
        c.spawn_failed(0.0, "x")
    c.start(0.0)
    run(c, 0.0, 1)
    with pytest.raises(InstanceError):
        c.spawned(0.0, 2)
    c.handle_timer(1000.0)  # no deadline in running: nothing
    assert c.state == "running"


def test_close_ends_stopped_and_finished() -> None:
    c = core(0.0)
    run(c, 0.0, 1)
    c.take_events()
    c.close(1.0)
    assert states(c) == ["stopped"] and c.finished and c.pid is None


# --- every sequence of inputs --------------------------------------------------------------------

CONTROLS = ("start", "stop", "restart", "update", "remove")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 3)), max_size=120))
def test_any_sequence_keeps_one_process_at_most_and_consistent_state(
    steps: list[tuple[int, int]],
) -> None:
    """A driver that does whatever the core asks, with inputs in any order: there is never more
    than one process (nor a spawn while one exists), a Terminate names the running process,
    pid/deadline match the state, and a removed instance ends finished once its process is
    gone."""
    now = 0.0
    c = core(now)
    spawning: Spawn | None = None  # taken, not answered yet
    process: int | None = None  # pid of the live process
    terminating = False
    next_pid = 1
    for action, arg in steps:
        now += 0.7 * arg
        if action == 0 and not c.removed:
            control = CONTROLS[arg % len(CONTROLS)]
            if control == "update":
                c.update(now, OTHER if c.spec == SPEC else SPEC, running=bool(arg % 2))
            else:
                getattr(c, control)(now)
        elif action in (1, 2):  # the driver acts on the outputs
            for output in c.take_outputs():
                if isinstance(output, Spawn):
                    assert spawning is None and process is None, "two copies"
                    assert c.state == "starting"
                    spawning = output
                else:
                    assert output.pid == process and c.state == "stopping"
                    terminating = True
        elif action == 3 and spawning is not None:  # the spawn finishes
            spawning = None
            if arg == 0:
                c.spawn_failed(now, "cannot start")
            else:
                process = next_pid
                next_pid += 1
                c.spawned(now, process)
        elif action == 4 and process is not None and (terminating or arg == 0):
            process = None  # exits (by itself, or terminated)
            terminating = False
            c.exited(now, -15 if arg else 1)
        elif action == 5:
            c.handle_timer(now)
        elif action == 6:
            deadline = c.next_deadline()
            if deadline is not None:
                now = max(now, deadline)
                c.handle_timer(now)
        for event in c.take_events():
            assert event.state != event.previous or event.state == "starting"
        # State and driver agree.
        if process is not None:
            assert c.state in ("running", "stopping") and c.pid == process
        else:
            assert c.pid is None and c.state not in ("running", "stopping")
        assert (c.next_deadline() is not None) == (c.state in ("backoff", "failed", "waiting"))
        if c.state == "starting":
            assert spawning is not None or any(isinstance(o, Spawn) for o in c._outputs)
    # Whatever happened, a removal ends with the instance finished once the driver catches up.
    if not c.removed:
        c.remove(now)
    for _ in range(3):
        for output in c.take_outputs():
            if isinstance(output, Spawn):
                spawning = output
        if spawning is not None:
            spawning = None
            c.spawn_failed(now, "cannot start")
        if process is not None:
            process = None
            c.exited(now, -15)
    assert c.finished and c.take_outputs() == []
