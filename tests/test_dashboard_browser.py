"""`stagemesh demo` in a network namespace, its node dashboard in headless Chromium (Debian's,
through Playwright): the federation drawn, a killed node shown by the page by itself, and
nothing left running after Ctrl-C.

The demo binds 127.0.0.1 of a namespace the test made, so Chromium runs in that namespace too
(``tests/dashboard_probe.py``, driven over stdin/stdout). Screenshots go to the test's folder;
``STAGEMESH_KEEP_SCREENSHOTS=DIR`` also copies them there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mesh._state import find_status_files
from tests.demos import start_demo, stop_demo
from tests.netns import Lan, Spawned

pytestmark = [pytest.mark.netns, pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "tests" / "dashboard_probe.py"


def _json(spawned: Spawned, step: str, timeout: float) -> dict[str, Any]:
    line = spawned.wait_for(lambda text: text.startswith("{"), timeout)
    doc: dict[str, Any] = json.loads(line)
    assert doc["step"] == step, doc
    return doc


def _probe(lan: Lan, url: str, shots: Path, *args: str) -> tuple[subprocess.Popen[str], Spawned]:
    """Start ``tests/dashboard_probe.py`` in the demo's namespace, stdin a pipe."""
    process = subprocess.Popen(
        lan.command(lan.hosts[0], sys.executable, str(PROBE), url, str(shots), *args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, Spawned(process, lan.hosts[0])


def _keep(shots: Path, name: str) -> None:
    keep = os.environ.get("STAGEMESH_KEEP_SCREENSHOTS")
    if keep:
        target = Path(keep) / name
        target.mkdir(parents=True, exist_ok=True)
        for png in shots.glob("*.png"):
            shutil.copy(png, target / png.name)


def test_demo_dashboard_draws_the_federation_and_updates_itself(tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    with Lan(1) as lan:
        demo, folder, ready = start_demo(lan, tmp_path, "--nodes", "6")
        assert ready["dashboard"] == "http://127.0.0.1:7490/"
        assert ready["registry"] == "http://127.0.0.1:7480/federations/demo"
        process, probe = _probe(lan, ready["dashboard"], shots, "6")
        try:
            formed = _json(probe, "formed", 120)
            assert formed["circles"] == 6 and formed["groups"] == 2, formed
            assert len(formed["conductors"]) == 1 and len(formed["supernodes"]) == 2, formed
            assert formed["links"] == 1 and formed["spokes"] == 4, formed  # the mesh's links
            assert len(formed["offsets"]) == 6  # each node's clock offset and error bound
            # kill a node that holds no post (and is not the dashboard's own)
            pids = {d["path"]: d["pid"] for d in find_status_files(tmp_path / "run")}
            posts = {*formed["conductors"], *formed["supernodes"], "/cmu/ada"}
            victim = next(p for p in sorted(pids) if p not in posts)
            os.kill(pids[victim], signal.SIGKILL)
            assert process.stdin is not None
            process.stdin.write(victim + "\n")
            process.stdin.flush()
            changed = _json(probe, "changed", 60)
            assert changed["path"] == victim and changed["state"] in ("suspect", "dead")
            assert changed["after"] <= 5.0, changed  # the page changed by itself, in time
            assert changed["marker"] == "same page"  # no reload: the page updated itself
            dead = _json(probe, "dead", 90)
            assert dict(dead["nodes"])[victim] == "dead"
            demo.wait_for(lambda line: f"node {victim} stopped (killed by SIGKILL)" in line, 30)
        finally:
            if process.stdin is not None:
                process.stdin.close()
            probe.kill()
            _keep(shots, "demo")
        stop_demo(demo, folder)
    for name in ("1-formed.png", "2-changed.png", "3-dead.png"):
        assert (shots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_conference_demo_dashboard_shows_roles_and_the_last_push(tmp_path: Path) -> None:
    """Stations' role processes (their states) and the conductor's last push to each."""
    shots = tmp_path / "screenshots"
    with Lan(1) as lan:
        demo, folder, ready = start_demo(lan, tmp_path, "--nodes", "4", "--conference")
        key = str(Path(folder) / "operator.key")
        env = dict(os.environ, STAGEMESH_RUNTIME_DIR=str(tmp_path / "run"))

        def push(config: dict[str, Any], station: str) -> subprocess.CompletedProcess[str]:
            path = tmp_path / "push.json"
            path.write_text(json.dumps(config))
            return subprocess.run(
                lan.command(
                    lan.hosts[0],
                    sys.executable,
                    "-m",
                    "mesh",
                    "roles",
                    "push",
                    str(path),
                    "--station",
                    station,
                    "--merge",
                    "--operator-key",
                    key,
                ),
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
            )

        slides = {"command": {"slides": {"command": ["sh", "-c", "while :; do sleep 1; done"]}}}
        applied = push(slides, "/room-b/dmitri")
        assert applied.returncode == 0, applied
        applied = push(slides, "/room-a/clara")
        assert applied.returncode == 0, applied
        refused = push({"stream": {"hall": {"source": "cam", "url": "rtmp://x"}}}, "/room-a/clara")
        assert refused.returncode == 1 and "BlockedRole" in refused.stderr, refused
        process, probe = _probe(lan, ready["dashboard"], shots, "4", "--stations")
        try:
            formed = _json(probe, "formed", 180)
            table = formed["stations"]
            for station in ("/room-a/ada", "/room-b/bela", "/room-a/clara", "/room-b/dmitri"):
                assert station in table
            assert "running" in table and "record" in table and "upload" in table
            assert "refused: BlockedRole" in table, table  # clara's last push
            assert "applied" in table  # dmitri's
        finally:
            if process.stdin is not None:
                process.stdin.close()
            probe.kill()
            _keep(shots, "conference")
        stop_demo(demo, folder)
