"""Issue #18, finding 15: an open federation (no federation key) says so everywhere, not once
in a log: in ``/api/status`` (``security``), on the dashboard (a banner), and in what the
station says about remote role changes (refused, unless the operator chose otherwise with
``--insecure-remote-roles``, which the status and the dashboard then show as well)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.harness import wait_for
from tests.livenodes import start_nodes

pytestmark = pytest.mark.slow

OPEN_BANNER = "OPEN federation"
INSECURE_BANNER = "INSECURE: remote role changes are accepted without an operator signature"


@pytest.mark.parametrize(
    ("flags", "security", "mode", "banners"),
    [
        ([], "open", "refused", {OPEN_BANNER}),
        (["--insecure-remote-roles"], "open", "unsigned", {OPEN_BANNER, INSECURE_BANNER}),
        (["--key-file", "KEY"], "keyed", "refused", set()),
    ],
    ids=["open", "open-insecure", "keyed"],
)
async def test_open_is_visible(
    tmp_path: Path, flags: list[str], security: str, mode: str, banners: set[str]
) -> None:
    station = tmp_path / "station.json"
    station.write_text(json.dumps({"roles": {}}))
    key = tmp_path / "federation.key"
    key.write_text(f"1 {'ab' * 32}\n")
    args = ["--no-mdns", "--roles", str(station), *(str(key) if f == "KEY" else f for f in flags)]
    async with (
        start_nodes(tmp_path, ["station"], args, orchestra="room") as (node,),
        httpx.AsyncClient(timeout=10) as client,
    ):
        doc = await node.status()
        assert doc["security"] == security
        remote = doc["roles"]["remote_changes"]
        assert remote["mode"] == mode and remote["allowed"] is (mode != "refused")
        page = (await client.get(node.status_url + "/")).text
        for banner in (OPEN_BANNER, INSECURE_BANNER):
            assert _visible(page, banner) is (banner in banners), banner
        said = "remote role changes are refused" if mode == "refused" else "INSECURE"
        await wait_for(
            lambda: any(said in line for line in node.output), 5, "the station saying so at start"
        )


def _visible(page: str, banner: str) -> bool:
    """Whether the banner holding *banner* is on the page and rendered without ``hidden``."""
    if banner not in page:
        return False
    start = page.rfind("<div", 0, page.index(banner))
    return " hidden" not in page[start : page.index(">", start)]
