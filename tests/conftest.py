"""Shared test configuration: hypothesis's profile, the fixtures every module may use, and the
hard time limit of every test."""

from __future__ import annotations

import inspect
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pytest
import trio
from hypothesis import HealthCheck, settings

from tests.netns import lan as lan  # the multi-host fixture, for every test module
from tests.registries import (  # registry databases on both backends, for every test module
    databases as databases,
    module_databases as module_databases,
    postgres_cluster as postgres_cluster,
)

settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("ci")

IN_PROCESS_TIMEOUT = 150.0
"""The hard limit of a test of a pure core (the pyproject's ``timeout`` is for everything else):
the election's 500-seed sweep in ``test_election_core`` takes about 26 s on a 2-core machine
at a load average of 6, and ``.ci/run`` runs these tests at the idle scheduling priority
beside the live tests, which may leave them a third of a core for a while."""
IN_PROCESS_MODULES = frozenset(
    {
        "test_clock_core",
        "test_clock_registry_core",
        "test_election_core",
        "test_exports",
        "test_lineage",
        "test_link_core",
        "test_membership",
        "test_osc_core",
        "test_roles_config",
        "test_roles_desired",
        "test_roles_instance",
        "test_roles_manager_core",
        "test_roles_model",
        "test_wire",
    }
)
"""Test modules that drive sans-IO cores by hand, with no process, socket or real clock."""
SIMULATED_MODULES = IN_PROCESS_MODULES | {
    "test_clock_registry_sim",
    "test_clock_sim",
    "test_edge_fuzz",
    "test_node_sim",
    "test_roles_manager_sim",
    "test_sim",
    "test_sim_sites",
    "test_sim_wan_tier",
    "test_simqueue",
}
"""Test modules whose tests run in simulated time (the simulator, or cores driven by hand):
no real timer to miss, so ``.ci/run`` runs them on two workers side by side, and the tests
with real processes and real timers after them, one at a time (the ``simulated`` marker)."""

WAITING_TESTS = (
    "tests/test_sleeping_node.py::",
    "tests/test_netns_wan.py::",
    "tests/test_registry_chaos.py::",
    "tests/test_soak.py::",
    "tests/security/test_edge_addresses.py::",
    "tests/test_docs.py::test_block_runs",
)
"""Live tests (node ids, or a module's prefix) that run long because they wait on real time (a
laptop asleep for 30 s, a 60 s soak or registry chaos, a slow WAN link, the docs' blocks playing
their bars) while using little CPU (a quarter to half of one core), and whose bounds do not
depend on an idle machine: ``.ci/run`` runs them in a lane of their own beside the other live
tests (the ``waiting`` marker). Tests that bound a clock's spread or a failover's time to the
millisecond stay out of it."""


T = TypeVar("T")
TRIO_SHARE = 0.95
"""A trio test is cancelled at this share of its limit, before pytest-timeout's backstop."""


def bounded_trio_run(limit: float) -> Callable[..., Any]:
    """``trio.run`` with the whole test, its async fixtures included, under ``fail_after``.

    pytest-timeout's backstop (``timeout_method = "thread"``) can only end the whole run: a
    signal raised into a running trio loop would leave trio's state behind and fail every later
    test. Cancelling inside trio fails this test alone, with its traceback, while the helpers'
    shielded clean-up still kills the processes it started; the run goes on."""

    def run(
        async_fn: Callable[[], Awaitable[T]],
        *,
        clock: trio.abc.Clock | None = None,
        instruments: Sequence[trio.abc.Instrument] = (),
    ) -> T:
        async def bounded() -> T:
            try:
                with trio.fail_after(limit):
                    return await async_fn()
            except trio.TooSlowError:
                raise AssertionError(f"over the hard limit ({limit:.1f} s)") from None

        return trio.run(bounded, clock=clock, instruments=instruments)

    return run


def pytest_configure(config: pytest.Config) -> None:
    """Give Ctrl-C (SIGINT) its default meaning back if this run was started with it ignored.

    A shell without job control starts a command in the background (``&``: ``.ci/run``'s lane
    of waiting tests, ``nohup``) with SIGINT ignored, and a process keeps an ignored signal
    ignored across ``exec``: every node a test started would then ignore the Ctrl-C a test
    sends it (``test_cli_errors``' exit 130), and hang."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)  # the markers first: -m selects on them
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give the tests of the pure cores the lower limit (unless a test sets its own), run each
    trio test under its limit inside trio (:func:`bounded_trio_run`), and start the long tests
    first.

    Under pytest-xdist (``.ci/run``'s first part) the workers take tests in collection order:
    handing out the ``slow``-marked ones first keeps one of them from being the last test left
    while the other worker idles (longest-first scheduling). In one process (the live lanes of
    ``.ci/run``'s second part) the slow ones go last instead: they hold the live tests with the
    tightest bounds on real time, and by then the lane of ``waiting`` tests beside them has
    ended, so they have the machine to themselves."""
    slow_first = "PYTEST_XDIST_WORKER" in os.environ
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None) == slow_first)
    for item in items:
        if item.path.stem in SIMULATED_MODULES:
            item.add_marker(pytest.mark.simulated)
        if item.nodeid.startswith(WAITING_TESTS):
            item.add_marker(pytest.mark.waiting)
        if item.path.stem in IN_PROCESS_MODULES and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(IN_PROCESS_TIMEOUT))
        function = getattr(item, "obj", None)
        if not inspect.iscoroutinefunction(function) or hasattr(function, "hypothesis"):
            continue
        marker = item.get_closest_marker("timeout")
        limit = float(marker.args[0] if marker else config.getini("timeout"))
        item.add_marker(pytest.mark.trio(run=bounded_trio_run(limit * TRIO_SHARE)), append=False)
