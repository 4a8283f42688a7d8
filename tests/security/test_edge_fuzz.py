"""Issue 18: the structured fuzzer of a node's wire edge and core (tests/security/edge_fuzz.py),
a few thousand examples; ``bench/fuzz.py`` runs 100,000.

No exception escapes the edge or the core, no node leaves or exits, every refused input is
counted once by its reason, the node refutes at its own incarnation + 1, and everything it sends
is bound, fits, and is accepted by its receivers.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.security.edge_fuzz import FuzzStats, drive, steps

STATS = FuzzStats()

# Both tests on one pytest-xdist worker, the guard after the fuzz (it reads the fuzz's STATS).
pytestmark = pytest.mark.xdist_group("edge_fuzz")


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(example=steps, seed=st.integers(0, 2**16))
def test_hostile_input_never_escapes_the_edge_or_the_core(example: list[Any], seed: int) -> None:
    drive(example, seed, STATS)


def test_the_fuzzer_reached_every_part() -> None:
    """Guards the strategies (runs after the fuzz test in this module): inputs were accepted
    and refused for many reasons, and the core saw hostile news it had to cap."""
    if STATS.examples == 0:  # run on its own: fuzz first
        test_hostile_input_never_escapes_the_edge_or_the_core()
    assert STATS.accepted > 0 and STATS.outputs > 0
    assert {"malformed", "stale receiver", "stale", "unbound"} <= set(STATS.refused)
    assert STATS.core_refused["incarnation ahead"] > 0
