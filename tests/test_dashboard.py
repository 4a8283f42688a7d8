"""The dashboards' parts: the picture's layout, a node's summary and the dashboard's view
(pure), and the registry's federation page updating itself in Chromium."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import trio
from playwright.sync_api import sync_playwright

from mesh._dashboard import dashboard_view, node_summary
from mesh._picture import mesh_picture, orchestras_of
from tests.chromium import launch
from tests.registries import registry_http


def _member(path: str, state: str = "alive", **posts: bool) -> dict[str, Any]:
    return {
        "path": path,
        "state": state,
        "address": "127.0.0.1:1",
        "incarnation": 1,
        "supernode": posts.get("supernode", False),
        "conductor": posts.get("conductor", False),
        "roles": {},
    }


MEMBERS = [
    _member("/cmu/ada", supernode=True, conductor=True),
    _member("/cmu/clara", "suspect"),
    _member("/colorado/bela", supernode=True),
    _member("/colorado/dmitri", "dead"),
    _member("/stanford/sam", supernode=True),
    _member("/stanford/tom", "left"),
]


def test_the_picture_marks_posts_states_and_the_node_itself() -> None:
    pic = mesh_picture({"orchestras": orchestras_of(MEMBERS)}, "/colorado/bela")
    assert [g["name"] for g in pic["groups"]] == ["cmu", "colorado", "stanford"]
    classes = {n["path"]: n["class"].split() for n in pic["nodes"]}
    assert classes["/cmu/ada"] == ["node", "supernode", "conductor", "alive"]
    assert classes["/cmu/clara"] == ["node", "suspect"]
    assert classes["/colorado/dmitri"] == ["node", "dead"]
    assert classes["/stanford/tom"] == ["node", "left"]
    assert "self" in classes["/colorado/bela"]
    kinds = [link["class"] for link in pic["links"]]
    assert kinds.count("link") == 3  # the supernodes, pairwise
    assert kinds.count("spoke") == 3  # each other node to its supernode
    for node in pic["nodes"]:  # inside the canvas
        assert 0 < node["x"] < pic["width"] and 0 < node["y"] < pic["height"]


def test_a_summary_carries_states_not_commands() -> None:
    status = {
        "clock": {"offset": -2.5, "error_bound": 0.0004, "synced": True, "reference": None,
                  "is_reference": False},
        "roles": {
            "station": {"instances": [{"role": "record", "uuid": "cam", "state": "running",
                                       "argv": ["ffmpeg", "secret-url"], "tail": ["line"],
                                       "run_count": 2, "last_exit_text": "exit 1",
                                       "last_error": None}]},
            "manager": {"active": True, "stations": {"/room-a/cam": {
                "answer": None,
                "last_push": {"applied": False, "error_type": "BlockedRole",
                              "error": "role 'stream' is blocked", "time": 1.0}}}},
        },
    }  # fmt: skip
    summary = node_summary(status)
    assert summary["clock"]["offset"] == -2.5 and summary["clock"]["error_bound"] == 0.0004
    assert summary["instances"] == [
        {"role": "record", "uuid": "cam", "state": "running", "run_count": 2,
         "last_exit": "exit 1", "last_error": None}
    ]  # fmt: skip
    assert "secret-url" not in repr(summary) and "line" not in repr(summary["instances"])
    assert summary["pushes"]["/room-a/cam"]["error_type"] == "BlockedRole"
    status["roles"]["manager"]["active"] = False  # a standby's view is not the conductor's
    assert "pushes" not in node_summary(status)


def test_the_view_joins_each_members_clock_and_the_conductors_pushes() -> None:
    status = {
        "node": {"path": "/cmu/ada", "federation": "demo", "id": "x" * 32, "address": "a"},
        "members": [
            {**_member("/cmu/ada", supernode=True, conductor=True)},
            {**_member("/cmu/cam"), "roles": {"record": {"configured": 1, "running": 1}}},
        ],
        "conductor": "/cmu/ada",
        "clock": {"federation_time": 3.0},
    }
    summaries = {
        "/cmu/ada": {"clock": {"offset": 0.0012, "error_bound": 0.0003, "synced": True},
                     "pushes": {"/cmu/cam": {"applied": True, "time": 5.0}}},
        "/cmu/cam": {"clock": {"offset": -1.5, "error_bound": 0.002, "synced": True},
                     "instances": [{"role": "record", "uuid": "c", "state": "running"}]},
    }  # fmt: skip
    view = dashboard_view(status, summaries)
    rows = {r["path"]: r for r in view["members"]}
    assert rows["/cmu/ada"]["offset"] == "+1.200 ms"
    assert rows["/cmu/ada"]["error_bound"] == "0.300 ms"
    assert rows["/cmu/cam"]["offset"] == "-1.5000 s" and rows["/cmu/cam"]["roles"] == "record 1/1"
    assert rows["/cmu/ada"]["posts"] == ["conductor", "supernode"]
    (station,) = view["stations"]
    assert station["path"] == "/cmu/cam" and station["push"]["applied"] is True
    assert view["counts"] == {"alive": 2}
    missing = dashboard_view(status, {})  # members that did not answer
    assert {r["offset"] for r in missing["members"]} == {"-"}


@pytest.mark.browser
async def test_the_registry_page_updates_itself(tmp_path: Path) -> None:
    """A node registers while the page is open: the page shows it, without a reload."""
    async with registry_http(tmp_path / "registry.db") as http:
        url = str(http.base_url).rstrip("/")
        reply = await http.post(
            "/api/v1/federations/sleo/registrations",
            json={"orchestra": "cmu", "name": "alice", "supernode": True,
                  "conductor": True, "create": True},
        )  # fmt: skip
        assert reply.status_code == 201
        opened, seen = threading.Event(), {}

        def browse() -> None:
            with sync_playwright() as p:
                browser = launch(p)
                try:
                    page = browser.new_page()
                    page.set_default_timeout(15_000)
                    page.goto(url + "/federations/sleo")
                    assert page.locator("svg#mesh circle.node").count() == 1
                    page.evaluate("() => { window.__marker = 1; }")
                    opened.set()
                    page.wait_for_function(
                        "() => document.querySelectorAll('svg#mesh circle.node').length == 2"
                    )
                    seen["marker"] = page.evaluate("() => window.__marker")
                    seen["text"] = page.inner_text("#live")
                    seen["groups"] = page.locator("svg#mesh g.orchestra").count()
                    page.screenshot(path=str(tmp_path / "registry-live.png"), full_page=True)
                finally:
                    browser.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, browse)
            assert await trio.to_thread.run_sync(opened.wait, 60), "the page did not open"
            reply = await http.post(
                "/api/v1/federations/sleo/registrations",
                json={"orchestra": "colorado", "name": "bob", "supernode": True,
                      "create": True},
            )  # fmt: skip
            assert reply.status_code == 201
    assert seen["marker"] == 1  # the same page: it updated itself
    assert seen["groups"] == 2 and "/colorado/bob" in seen["text"]
