"""Shared test configuration."""

from __future__ import annotations

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
