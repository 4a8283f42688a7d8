"""Headless Chromium on a node's dashboard, run *inside* the network namespace of the demo it
looks at (the dashboard listens on that namespace's 127.0.0.1), driven by the test over
stdin/stdout, one JSON object per line:

    python3 tests/dashboard_probe.py URL OUTDIR NODES

1. waits until the page's picture shows NODES nodes, all alive, and one conductor; prints
   ``{"step": "formed", "nodes", "conductor", "supernodes", "offsets", ...}`` and saves
   ``1-formed.png``;
2. reads a line from stdin (the path of a node the test just killed), then, without reloading
   the page, waits until the picture shows that node in another state; prints
   ``{"step": "changed", "path", "state", "after"}`` (seconds since the line arrived) and saves
   ``2-changed.png``; then waits for ``dead`` and saves ``3-dead.png``.

With ``--stations`` it also waits for the stations table to list role processes and a last
push, and saves ``1-stations.png`` (the table in view).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from chromium import launch  # this script runs from tests/
from playwright.sync_api import Page, sync_playwright


def say(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


def picture(page: Page) -> dict[str, Any]:
    """What the SVG shows now."""
    doc: dict[str, Any] = page.evaluate(
        """() => {
        const nodes = [...document.querySelectorAll("svg#mesh g.member")];
        return {
          nodes: nodes.map(g => [g.dataset.path, g.dataset.state]),
          circles: document.querySelectorAll("svg#mesh circle.node").length,
          conductors: [...document.querySelectorAll("svg#mesh circle.node.conductor")]
            .map(c => c.parentNode.dataset.path),
          supernodes: [...document.querySelectorAll("svg#mesh circle.node.supernode")]
            .map(c => c.parentNode.dataset.path),
          groups: document.querySelectorAll("svg#mesh g.orchestra").length,
          links: document.querySelectorAll("svg#mesh line.link").length,
          spokes: document.querySelectorAll("svg#mesh line.spoke").length,
          offsets: [...document.querySelectorAll("#members tbody tr")]
            .map(tr => [tr.dataset.path, tr.children[3].textContent.trim(),
                        tr.children[4].textContent.trim()]),
          marker: window.__probe_marker || null,
        };
    }"""
    )
    return doc


def wait(page: Page, test: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        seen = picture(page)
        if test(seen):
            return seen
        if time.monotonic() > deadline:
            raise SystemExit(f"probe: {what} not seen within {timeout} s: {json.dumps(seen)}")
        page.wait_for_timeout(100)


def main() -> int:
    url, out, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    stations = "--stations" in sys.argv
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(15_000)
            page.goto(url)

            def formed(seen: dict[str, Any]) -> bool:
                return (
                    seen["circles"] == count
                    and all(state == "alive" for _, state in seen["nodes"])
                    and len(seen["conductors"]) == 1
                    and all(o[1] != "-" for o in seen["offsets"])
                )

            seen = wait(page, formed, 60, f"{count} alive nodes with a conductor and clocks")
            if stations:
                page.wait_for_function(
                    "() => document.querySelectorAll('#stations td.running').length >= 3"
                    " && /applied|refused/.test(document.querySelector('#stations').textContent)",
                    timeout=60_000,
                )
                page.locator("#stations").scroll_into_view_if_needed()
                page.screenshot(path=str(out / "1-stations.png"), full_page=True)
                seen["stations"] = page.inner_text("#stations")
            page.screenshot(path=str(out / "1-formed.png"), full_page=True)
            page.evaluate("() => { window.__probe_marker = 'same page'; }")
            say({"step": "formed", **seen})

            killed = sys.stdin.readline().strip()
            if not killed:
                return 0
            since = time.monotonic()

            def changed(seen: dict[str, Any]) -> bool:
                return dict(seen["nodes"]).get(killed) not in ("alive", None)

            seen = wait(page, changed, 30, f"{killed} shown in another state")
            after = time.monotonic() - since
            page.screenshot(path=str(out / "2-changed.png"), full_page=True)
            state = dict(seen["nodes"])[killed]
            say({"step": "changed", "path": killed, "state": state, "after": after, **seen})
            wait(page, lambda s: dict(s["nodes"]).get(killed) == "dead", 60, f"{killed} dead")
            page.screenshot(path=str(out / "3-dead.png"), full_page=True)
            say({"step": "dead", **picture(page)})
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
