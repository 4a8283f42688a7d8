"""Small things of the first hour: the open-federation warning once per process, and the loss a
scenario reports."""

from __future__ import annotations

import contextlib
import logging
import secrets
from pathlib import Path

import pytest

from mesh import LinkModel, open_node
from mesh._scenarios import run_scenario
from tests.livenodes import loopback_config


async def test_the_open_federation_warning_is_printed_once_per_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    federation = f"open-{secrets.token_hex(4)}"  # not warned about yet in this process
    caplog.set_level(logging.WARNING, logger="mesh._node")
    async with contextlib.AsyncExitStack() as stack:
        for name in ("a", "b", "c", "d"):
            config = loopback_config(tmp_path, f"/o/{name}", federation=federation)
            await stack.enter_async_context(open_node(config))
    warnings = [r for r in caplog.records if "is OPEN" in r.getMessage()]
    assert len(warnings) == 1 and federation in warnings[0].getMessage()


def test_a_scenario_reports_the_loss_of_the_link_it_used() -> None:
    result = run_scenario("join", 5, seed=3, link=LinkModel(loss=0.02))
    assert result.loss == 0.02 and result.as_dict()["loss"] == 0.02
    assert run_scenario("join", 5, seed=3, loss=0.02).loss == 0.02
    with pytest.raises(ValueError, match="disagree"):
        run_scenario("join", 5, seed=3, loss=0.05, link=LinkModel(loss=0.02))
