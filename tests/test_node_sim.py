"""Whole-node properties in the deterministic simulator (mesh._chaos): real membership,
election and clock cores, skewed and drifting clocks, loss, crashes, restarts, stalls and
partitions; then the same with two sites that only a simulated registry joins (each site its
own LAN, a WAN link of the seed's own delay and loss between them, the site tier on the
``wan`` profile), the registry arbitrating the conductor through its own faults. 500 seeds
each in CI; ``bench/election.py`` runs 10,000."""

from __future__ import annotations

import pytest

from mesh._chaos import AGREEMENT_BOUND_S, registry_agreement_bound_s, run_chaos

REGISTRY_BOUND_S = registry_agreement_bound_s(6, 2)
"""114 s: a verdict across the WAN takes the wan suspicion, one per member of a site that
vanished whole (see the function); most seeds agree within a second or two."""
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


OPEN_REGISTRY_SEEDS = {
    127: "a refutation that did not cross to the other site before its suspicion timed out",
}
"""Seeds of the sweep on sites that still fail, for an open cause (docs/testing.md, "Whole
nodes with the registry, on sites"): what crossed the WAN once and was lost waits for a chance
state exchange between the sites' supernodes. In 127 a member suspected in the faults refutes
at once on its own site, but the refutation does not reach the other site for 12 s; after the
faults the other site's members' `wan` suspicion runs out and they declare it dead (agreement
reached, then lost). Each must still fail that way and only that way: a fix shows here, and
the seed moves to REGISTRY_REGRESSION_SEEDS. (1, 58 and 354 were open for the same gap: a
suspicion of another site's member that never reached the member's own site, so nobody
refuted it; they pass since the clock changed their traces.)"""
OPEN_FAILURE = "agreement did not hold after it was reached"


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_one_conductor_across_sites_that_only_the_registry_joins(chunk: int) -> None:
    worst = 0.0
    for seed in range(chunk * SEEDS_PER_CHUNK, (chunk + 1) * SEEDS_PER_CHUNK):
        result = run_chaos(seed, registry=True)
        if seed in OPEN_REGISTRY_SEEDS:
            assert result.failure == OPEN_FAILURE, f"seed {seed} (open): {result.failure}"
            assert result.conductor_violations == 0
            continue
        # As above on sites (the site tier, a WAN between them), within the bound derived
        # from the profiles; and while the registry was up and reachable no node held the
        # conductor the registry did not record (beyond the time a holder takes to learn it
        # lost it), so at most one did; at the end the registry records the mesh's conductor,
        # every synced node is within its error bound of the registry's time, and time ran
        # within 1 +- 0.5%.
        assert result.ok, f"seed {seed} (registry): {result.failure}"
        assert result.agreement_s is not None and result.agreement_s <= REGISTRY_BOUND_S
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


# Seeds of the registry sweep on sites that once failed, each named for its root cause (fixed
# in the cores: mesh/_membership.py, mesh/_election.py); later changes may make them run
# differently, as for the seeds above.
REGISTRY_REGRESSION_SEEDS = {
    21: "a site's refutation lost across the WAN: the other site kept the member dead",
    48: "a conductor lease's one crossing lost: the other site saw no conductor for minutes",
    71: "a supernode lease re-announced across but never passed to its site's members",
    108: "a death's one crossing lost: the other site kept a dead member alive",
    173: "a wan probe of a member no longer a contact suspected it after the heal",
    204: "the granted conductor stepped down for a local-rule claim the registry refused",
    1756: "a site top's lineage wait ended at first + wait, which now - first did not reach",
}


@pytest.mark.parametrize("seed", sorted(REGISTRY_REGRESSION_SEEDS))
def test_registry_sites_regression_seeds(seed: int) -> None:
    result = run_chaos(seed, registry=True)
    assert result.ok, f"seed {seed} ({REGISTRY_REGRESSION_SEEDS[seed]}): {result.failure}"
    assert result.agreement_s is not None and result.agreement_s <= REGISTRY_BOUND_S
    assert result.conductor_violations == 0


def test_larger_group_with_more_orchestras() -> None:
    for seed in range(10):
        result = run_chaos(seed, nodes=12, orchestras=3, candidates=3)
        assert result.ok, f"seed {seed}: {result.failure}"


def test_same_seed_same_trace() -> None:
    assert run_chaos(7).trace_hash == run_chaos(7).trace_hash
    assert run_chaos(7).trace_hash != run_chaos(8).trace_hash
    with_registry = run_chaos(7, registry=True).trace_hash
    assert with_registry == run_chaos(7, registry=True).trace_hash
