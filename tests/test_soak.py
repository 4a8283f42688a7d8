"""A 60 s soak of 8 real nodes on a bad network (tests/soak.py; ``bench/soak.py`` runs the
10-minute version): 5 % loss, 20 ms +- 10 ms delay (which reorders), random halves partitioned
every 20 s for 8 s. The kernel here has no netem: the loss and delay come from the user-space
hub of tests/impair.py, through which every frame between the hosts passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.soak import SoakConfig, run_soak

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def test_soak_under_loss_delay_and_partitions(tmp_path: Path) -> None:
    config = SoakConfig(duration=60, cycle=20, partition=8, warmup=5, seed=13)
    result = run_soak(config, tmp_path, progress=print)
    verdict = result.verdict
    print(json.dumps({k: v for k, v in verdict.items() if k != "hub"}, indent=1, default=str))
    print(json.dumps(verdict["hub"]))

    # The network was as bad as asked: ~5 % of frames lost, some reordered.
    hub = result.hub
    offered = sum(p["offered"] for p in hub["pairs"].values()) - hub["dropped"]["partition"]
    assert 0.03 < hub["dropped"]["loss"] / offered < 0.07, hub["dropped"]
    assert hub["reordered"] > 0
    assert verdict["partitions"] == 3

    for path, status in verdict["nodes_exited"].items():
        log = result.logs[result.paths.index(path)]
        raise AssertionError(f"{path} exited with status {status}: {log[-3000:]}")
    assert not verdict["false_deaths"], verdict["false_deaths"]
    # Two candidates of one side can both claim a vacant post when the first claim's gossip
    # misses the second under loss; the election's guarantee is that such a race ends within
    # a bounded time. Issue 13's "one conductor throughout" is reported by the bench
    # (docs/testing.md).
    assert verdict["two_holders_longest_s"] < config.merge_bound, verdict["two_holders"]
    assert not verdict["conductor_changed_to"], "the first conductor must keep the post"
    assert verdict["merge_max"] <= config.merge_bound, verdict["merge_seconds"]
    assert verdict["unanswered_samples"] == 0

    # The clock never steps back, and every error stays within the bound the node reports.
    assert not verdict["clock_went_back"], verdict["clock_went_back"]
    assert not verdict["clock_bound_violations"], verdict["clock_bound_violations"][:5]
    # Issue 13 asks for p99 <= 1 ms (bench/soak.py measures it over 10 minutes); here, with
    # three partitions in a minute and a short rate history, measured 0.95 ms on a quiet
    # machine (2-3 ms before the clock's rate history and stash, docs/testing.md). The limit
    # leaves room for a loaded machine's scheduling.
    assert verdict["clock_p99_us"] <= 3_000, verdict["clock_us"]
