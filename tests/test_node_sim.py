"""Whole-node properties in the deterministic simulator (mesh._chaos): real membership,
election and clock cores, skewed and drifting clocks, loss, crashes, restarts, stalls and
partitions; then the same with two sites that only a simulated registry joins, the registry
arbitrating the conductor through its own faults. 500 seeds each in CI; ``bench/election.py``
runs 10,000."""

from __future__ import annotations

import pytest

from mesh._chaos import run_chaos

AGREEMENT_BOUND_S = 30.0
CHUNKS = 5
SEEDS_PER_CHUNK = 100


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_one_conductor_one_supernode_per_orchestra_and_honest_clocks(chunk: int) -> None:
    worst = 0.0
    for seed in range(chunk * SEEDS_PER_CHUNK, (chunk + 1) * SEEDS_PER_CHUNK):
        result = run_chaos(seed)
        # Agreement (same members alive, one conductor, one supernode per orchestra) was
        # reached within the bound after the faults ended and held through the tail; federation
        # time never went backwards on any node; synced nodes stayed within their error bound.
        assert result.ok, f"seed {seed}: {result.failure}"
        assert result.agreement_s is not None and result.agreement_s <= AGREEMENT_BOUND_S
        assert result.backwards == 0 and result.bound_violations == 0
        worst = max(worst, result.agreement_s)
    print(f"chunk {chunk}: worst time to agreement {worst:.1f} s")


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_one_conductor_across_sites_that_only_the_registry_joins(chunk: int) -> None:
    worst = 0.0
    for seed in range(chunk * SEEDS_PER_CHUNK, (chunk + 1) * SEEDS_PER_CHUNK):
        result = run_chaos(seed, registry=True)
        # As above; and while the registry was up and reachable no node held the conductor
        # the registry did not record (beyond the time a holder takes to learn it lost it),
        # at the end the registry records the mesh's conductor, every synced node is within
        # its error bound of the registry's time, and time ran within 1 +- 0.5%.
        assert result.ok, f"seed {seed} (registry): {result.failure}"
        assert result.agreement_s is not None and result.agreement_s <= AGREEMENT_BOUND_S
        assert result.conductor_violations == 0 and result.rate_violations == 0
        worst = max(worst, result.agreement_s)
    print(f"chunk {chunk}: worst time to agreement {worst:.1f} s")


# Seeds that once lost agreement after reaching it (a membership flap once the faults had
# ended), each named for its root cause; the hand-driven tests in tests/test_membership.py show
# each transition. (8747, 3079 and 8716 came from the 10,000-seed sweep; after a change to the
# clock they run differently; 2031 and 7894 show the two causes on the current code.)
REGRESSION_SEEDS = {
    8747: "probe begun in a partition suspected a member heard from since the heal",
    3079: "probe with a lost ping suspected a member that kept talking to the prober",
    2031: "probe begun in a partition suspected a member heard from since the heal",
    8716: "a push-pull's suspect record revived a member declared dead (it had crashed)",
    7894: "a push-pull's suspect record revived a member declared dead (it had crashed)",
}


@pytest.mark.parametrize("seed", sorted(REGRESSION_SEEDS))
def test_agreement_once_reached_holds_regression_seeds(seed: int) -> None:
    result = run_chaos(seed)
    assert result.ok, f"seed {seed} ({REGRESSION_SEEDS[seed]}): {result.failure}"
    assert result.agreement_s is not None and result.agreement_s <= AGREEMENT_BOUND_S


def test_larger_group_with_more_orchestras() -> None:
    for seed in range(10):
        result = run_chaos(seed, nodes=12, orchestras=3, candidates=3)
        assert result.ok, f"seed {seed}: {result.failure}"


def test_same_seed_same_trace() -> None:
    assert run_chaos(7).trace_hash == run_chaos(7).trace_hash
    assert run_chaos(7).trace_hash != run_chaos(8).trace_hash
    with_registry = run_chaos(7, registry=True).trace_hash
    assert with_registry == run_chaos(7, registry=True).trace_hash
