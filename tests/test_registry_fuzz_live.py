"""Fuzzing a real ``stagemesh registry`` process over HTTP (registration limits off).

schemathesis against the registry's own OpenAPI document: no 5xx, every answer documented and
conforming to its schema, every 4xx a JSON error that says what is wrong, stateful runs along
the document's links (register -> heartbeat, unregister, conductor compare-and-set with the
token). hypothesis against the legacy GET API: no 5xx, every error one ``Error: ...`` line
that says what is wrong, every line of a ``register`` answer in the 2012 format.
Both on each database backend. ``bench/registry_fuzz.py`` runs 10,000 examples of each.
"""

from __future__ import annotations

import functools
from pathlib import Path

import httpx
import pytest
import trio

from tests.registries import Databases, running_registry
from tests.registry_fuzzing import (
    REGISTRY_ARGS,
    REGISTRY_ENV,
    fuzz_legacy,
    prepare_legacy,
    run_schemathesis,
)

pytestmark = pytest.mark.slow

OPERATIONS = {
    "GET /api/v1/federations",
    "POST /api/v1/federations",
    "GET /api/v1/federations/{federation}",
    "DELETE /api/v1/federations/{federation}",
    "POST /api/v1/federations/{federation}/reset",
    "GET /api/v1/federations/{federation}/orchestras",
    "POST /api/v1/federations/{federation}/orchestras",
    "POST /api/v1/federations/{federation}/registrations",
    "GET /api/v1/federations/{federation}/conductor",
    "POST /api/v1/federations/{federation}/conductor",
    "GET /api/v1/federations/{federation}/elapsed",
    "POST /api/v1/federations/{federation}/epoch",
    "POST /api/v1/registrations/{token}/heartbeat",
    "DELETE /api/v1/registrations/{token}",
}


@pytest.mark.timeout(960)  # its own bound, 900 s, speaks first
async def test_schemathesis_finds_no_5xx_no_undocumented_answer_and_no_vague_error(
    databases: Databases, tmp_path: Path
) -> None:
    with trio.fail_after(900):
        async with running_registry(databases.new(), *REGISTRY_ARGS, env=REGISTRY_ENV) as url:
            unit = await run_schemathesis(
                url,
                tmp_path,
                max_examples=80,
                seed=1,
                timeout=600,
                phases="examples,coverage,fuzzing",
            )
            assert unit.returncode == 0, unit.output[-30000:]
            stateful = await run_schemathesis(
                url, tmp_path, max_examples=80, seed=1, timeout=300, phases="stateful", max_time=10
            )
            assert stateful.returncode == 0, stateful.output[-30000:]
    for run in (unit, stateful):
        assert run.unique_failures == 0 and run.server_errors == 0
        assert all(400 <= int(key.split()[0]) < 500 for key in run.errors)
    print(
        f"schemathesis: {unit.generated} + {stateful.generated} cases, {stateful.scenarios}"
        f" scenarios, {unit.requests + stateful.requests} requests, {stateful.links}"
    )
    assert unit.generated >= 1000, unit.output[-5000:]
    assert stateful.scenarios >= 20, stateful.output[-5000:]
    # it reached every operation's logic, the token-taking ones (heartbeat, unregister, the
    # conductor's compare-and-set, the epoch handover) through the document's links
    reached = {
        op
        for run in (unit, stateful)
        for op, statuses in run.operations.items()
        if any(s < 300 for s in statuses)
    }
    assert reached >= OPERATIONS, sorted(OPERATIONS - reached)


@pytest.mark.timeout(660)  # its own bound, 600 s, speaks first
async def test_legacy_get_api_under_hostile_query_strings(databases: Databases) -> None:
    with trio.fail_after(600):
        async with running_registry(databases.new(), *REGISTRY_ARGS, env=REGISTRY_ENV) as url:
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                await prepare_legacy(http)
            run = await trio.to_thread.run_sync(
                functools.partial(fuzz_legacy, url, examples=1500, seed=1)
            )
    print(f"legacy: {run.requests} requests in {run.seconds:.0f} s, {run.registered} registered")
    assert run.requests >= 1500 and not any(s >= 500 for s in run.statuses)
    assert run.registered >= 60  # register answers were parsed line by line, not only errors
    assert run.statuses[400] >= 500
