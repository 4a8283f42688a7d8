"""Registry chaos for 60 s (tests/registry_chaos.py; ``bench/registry_chaos.py`` runs 20
minutes): mixed load on a real ``stagemesh registry``, ``kill -9`` every 15 s and a restart on
the same database; after each restart every acknowledged write is there (checked against the
client's log) and there is never a second conductor."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import trio

from tests.registries import start_registry
from tests.registry_chaos import (
    ChaosConfig,
    Ledger,
    RegistryApi,
    check,
    expected_from_log,
    run_chaos,
)

pytestmark = pytest.mark.slow


# httpx leaves a request-body generator unfinished when the registry dies mid-request; that
# is the point of this test, so its ResourceWarning is expected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_kill_9_every_15_s_loses_no_acknowledged_write(tmp_path: Path) -> None:
    config = ChaosConfig(duration=60, kill_every=15, workers=6, rate=15, seed=5)
    with trio.fail_after(150):
        result = await run_chaos(config, tmp_path, tmp_path / "log.jsonl", progress=print)
    print(json.dumps(result.counts))
    assert result.kills == 4 and result.checks == 4
    # The load was mixed and the kills landed on it: every kind of write was acknowledged,
    # and some calls were cut off by a kill.
    for op in ("register", "heartbeat", "unregister", "legacy_register", "legacy_unregister"):
        assert result.counts.get(f"{op}:ack", 0) > 0, op
    assert result.counts.get("conductor:ack", 0) > 0, "no conductor claim was granted"
    assert sum(v for k, v in result.counts.items() if k.endswith(":unanswered")) > 0
    assert not result.problems, result.problems[:10]
    assert not result.duplicates, result.duplicates
    assert result.replayed_ok, "the log does not replay to the state the client kept"


async def test_the_check_finds_what_the_registry_lost(tmp_path: Path) -> None:
    """The check is not vacuous: writes the log says were acknowledged but the registry does
    not have (made up here, as a registry that lost them would show) are each reported."""
    proc, url = await start_registry(tmp_path / "registry.db", "--ttl", "3600")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            api = RegistryApi(http, "lost")
            await api.learn()
            with Ledger.open(tmp_path / "log.jsonl") as ledger:
                now = time.time()
                kept = await api.register("o", "kept", "id-kept", supernode=False, conductor=True)
                assert kept.status == 201 and kept.body["conductor_granted"]
                ledger.write(
                    op="register",
                    path="/o/kept",
                    kind="json",
                    result="ack",
                    sent=now,
                    token=kept.body["token"],
                    node_id="id-kept",
                )
                assert not await check(api, ledger)  # a faithful log: nothing to report
                # Made-up acknowledgements of writes the registry never saw:
                ledger.write(
                    op="register",
                    path="/o/ghost",
                    kind="json",
                    result="ack",
                    sent=now,
                    token="x" * 24,
                    node_id="id-ghost",
                )
                ledger.write(op="unregister", path="/o/kept", kind="json", result="ack")
                ledger.write(
                    op="legacy_register", path="/legacy/old", kind="legacy", result="ack", sent=now
                )
                ledger.observe(7, "/o/ghost", acked=True, source="made up")
                problems = {p["problem"] for p in await check(api, ledger)}
        assert problems == {
            "acknowledged registration lost",  # /o/ghost and /legacy/old
            "acknowledged token refused",  # /o/ghost's token
            "acknowledged unregister lost",  # /o/kept is still there
            "acknowledged conductor term lost",  # term 7 was never reached
        }
        ledger2 = expected_from_log(tmp_path / "log.jsonl")
        assert ledger2.paths["/o/kept"].expect == "absent"
        assert ledger2.max_acked_term == 7
    finally:
        proc.kill()
        await proc.wait()
