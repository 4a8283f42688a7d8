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
"""117 s: a verdict across the WAN takes the wan suspicion and a probe timeout, one per member
of a site that vanished whole (see the function); most seeds agree within a second or two."""
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
# in the cores: mesh/_membership.py, mesh/_election.py, mesh/_nodecore.py); later changes may
# make them run differently, as for the seeds above.
REGISTRY_REGRESSION_SEEDS = {
    21: "a site's refutation lost across the WAN: the other site kept the member dead",
    48: "a conductor lease's one crossing lost: the other site saw no conductor for minutes",
    71: "a supernode lease re-announced across but never passed to its site's members",
    108: "a death's one crossing lost: the other site kept a dead member alive",
    173: "a wan probe of a member no longer a contact suspected it after the heal",
    204: "the granted conductor stepped down for a local-rule claim the registry refused",
    1756: "a site top's lineage wait ended at first + wait, which now - first did not reach",
    # A suspicion of another site's member (not a contact) ran out into a death a few seconds
    # after the faults, before that site had answered it: it is handed to the site again each
    # time it runs out, a supernode checks it with the member's site (a push-pull with its
    # contact), a refutation or that site's verdict ends it, and a node's timer acts on it
    # only if nobody answered it for two of its longest timeouts.
    1: "a member's suspicion of the other site's member never reached that site: unrefuted",
    354: "a refutation lost across: the supernode's suspicion of it ran out unchecked",
    58: "a suspicion of the other site's member ran out before that site answered it",
    662: "a suspicion of the other site's member ran out before that site answered it",
    747: "a suspicion of the other site's member ran out before that site answered it",
    1498: "a suspicion of the other site's member ran out before that site answered it",
    1642: "a suspicion of the other site's member ran out before that site answered it",
    1849: "a suspicion of the other site's member ran out before that site answered it",
    1871: "a suspicion of the other site's member ran out before that site answered it",
    2327: "a suspicion of the other site's member ran out before that site answered it",
    2463: "a suspicion of the other site's member ran out before that site answered it",
    # Nothing made the supernodes exchange state on a schedule: they now do, every wan
    # push-pull period.
    2247: "a member's record lost across: the other site never learned it",
    2328: "a member's record lost across: learned at a chance push-pull 130 s after the faults",
    # Found by the first version of the fixes above (the 2500 seeds again).
    549: "a member held another site's dead member suspect a second wan timeout (64 s)",
    2336: "a contact declared dead 0.4 s after the sites' partition healed, never told again",
    # ... and by the second (a suspicion of another site's member never acted on by a timer).
    16: "a suspicion of an incarnation only one node heard of, which nobody could answer",
    446: "a suspicion of an incarnation only one node heard of, which nobody could answer",
    477: "a suspicion of an incarnation only one node heard of, which nobody could answer",
    # Agreement counted with a suspicion from the faults still pending (now it is reached with
    # none left): the suspicion ended in a death a moment later, refuted at once.
    2687: "a contact's suspicion pending at the heal, declared 0.3 s after it, counted agreed",
    3058: "a contact's suspicion pending at the heal, declared 0.5 s after it, counted agreed",
    # A site's top that had run on its own while cut off handed the registry an older epoch
    # of its own lineage (a "correction"): the registry's time moved under every node that
    # followed it, beyond their bounds until their next sample (mesh/_nodecore.py; shown by
    # tests/test_clock_registry_core.py).
    6010: "a top moved its lineage's registry time 3.4 ms: a member's bound (via its top) short",
    6494: "a top moved its lineage's registry time 5.4 ms: the other top's bound short",
    # Two sites' tops of one lineage that ran apart each met the registry's older lineage and
    # announced a step (0 and 12.6 ms); all took the earliest, and one site's members held the
    # bound they had against the old lineage: a step now carries its uncertainty, the largest
    # any top of the lineage measured for it (mesh/_nodecore.py, ClockCore.step; shown by
    # tests/test_clock_core.py).
    3547: "a site stepped to the registry's lineage 12.6 ms off: its members' bounds short",
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
