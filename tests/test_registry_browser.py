"""Headless Chromium (Debian's, driven by Playwright) opens the registry's pages."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.chromium import launch
from tests.registries import spawn_registry, stop_registry

pytestmark = pytest.mark.browser


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    proc, url = spawn_registry(
        tmp_path / "registry.db", env={"STAGEMESH_ADMIN_PASSWORD": "hunter2"}
    )
    try:
        yield url
    finally:
        assert stop_registry(proc, timeout=10) == 0


def test_federation_page_in_chromium(registry: str, tmp_path: Path) -> None:
    with httpx.Client(base_url=registry, timeout=10) as http:
        for orch, name, sup, cond in [
            ("cmu", "alice", True, True),
            ("cmu", "rbd", False, False),
            ("cmu", "max", False, False),
            ("colorado", "bob", True, False),
            ("colorado", "eve", False, False),
            ("stanford", "sam", True, False),
        ]:
            r = http.post(
                "/api/v1/federations/sleo/registrations",
                json={
                    "orchestra": orch,
                    "name": name,
                    "supernode": sup,
                    "conductor": cond,
                    "create": True,
                },
            )
            assert r.status_code == 201
    shot = tmp_path / "federation.png"
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(registry + "/")
            page.click("text=sleo")
            assert page.url.endswith("/federations/sleo")
            body = page.inner_text("body")
            for path in [
                "/cmu/alice",
                "/cmu/rbd",
                "/cmu/max",
                "/colorado/bob",
                "/colorado/eve",
                "/stanford/sam",
            ]:
                assert path in body
            assert "Conductor: /cmu/alice" in body
            svg = page.locator("svg#mesh")
            assert svg.is_visible()
            assert page.locator("svg#mesh g.orchestra").count() == 3
            assert page.locator("svg#mesh circle.node").count() == 6
            assert page.locator("svg#mesh circle.supernode").count() == 3
            assert page.locator("svg#mesh circle.conductor").count() == 1
            assert page.locator("svg#mesh line.link").count() == 3
            box = svg.bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 200
            assert "expires" in body and re.search(r"in \d+ s \(without heartbeats\)", body)
            page.screenshot(path=str(shot), full_page=True)
            assert page.locator("form").count() == 0  # no admin form on the public page
            with page.expect_response(lambda r: r.url.endswith("/federations/sleo/admin")) as info:
                page.click("#admin")
            response = info.value
            assert response.status == 401
            assert response.headers["www-authenticate"].startswith("Basic")

            # the organiser logs in: the admin page's Reset button works
            context = browser.new_context(
                http_credentials={"username": "organiser", "password": "hunter2"}
            )
            admin = context.new_page()
            admin.set_default_timeout(15_000)
            admin.goto(registry + "/federations/sleo")
            admin.click("#admin")
            assert admin.url.endswith("/federations/sleo/admin")
            admin.click("#reset")
            admin.wait_for_url(registry + "/federations/sleo")
            assert "No nodes." in admin.inner_text("body")
            context.close()
        finally:
            browser.close()
    if os.environ.get("STAGEMESH_KEEP_SCREENSHOT"):
        Path(os.environ["STAGEMESH_KEEP_SCREENSHOT"]).write_bytes(shot.read_bytes())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with httpx.Client(base_url=registry, timeout=10) as http:
        view = http.get("/api/v1/federations/sleo").json()  # reset, not deleted
        assert view["registrations"] == 0 and len(view["orchestras"]) == 3
