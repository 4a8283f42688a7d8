"""Shared test configuration."""

from __future__ import annotations

import pytest
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

IN_PROCESS_TIMEOUT = 60.0
"""The hard limit of a test of a pure core (the pyproject's ``timeout`` is for everything else):
the slowest of them takes about 14 s on a busy 2-core machine."""
IN_PROCESS_MODULES = frozenset(
    {
        "test_clock_core",
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give the tests of the pure cores the lower limit, unless a test sets its own."""
    for item in items:
        if item.path.stem in IN_PROCESS_MODULES and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(IN_PROCESS_TIMEOUT))
