"""Running ``stagemesh demo`` in a test's network namespace, and checking that it leaves no
process behind (one way, for the demo's tests)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from tests.netns import Lan, Spawned

__all__ = ["processes_mentioning", "start_demo", "stop_demo"]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of this machine's processes that mention *text*."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def start_demo(lan: Lan, tmp_path: Path, *args: str) -> tuple[Spawned, str, dict[str, str]]:
    env = dict(os.environ, STAGEMESH_RUNTIME_DIR=str(tmp_path / "run"), TMPDIR=str(tmp_path))
    env = {k: v for k, v in env.items() if not k.startswith("STAGEMESH_") or "RUNTIME" in k}
    demo = lan.spawn(lan.hosts[0], sys.executable, "-m", "mesh", "demo", *args, env=env)
    first = demo.wait_for(lambda line: line.startswith("stagemesh demo:"), 60)
    folder = first.rsplit("state in ", 1)[1]
    assert folder.startswith(str(tmp_path)), first
    ready = demo.wait_for(lambda line: line.startswith("ready "), 180)
    fields = dict(part.split("=", 1) for part in ready.split()[1:])
    return demo, folder, fields


def stop_demo(demo: Spawned, folder: str) -> None:
    demo.process.send_signal(signal.SIGINT)
    demo.wait_for(lambda line: line.startswith("stopped: every process"), 60)
    assert demo.process.wait(timeout=30) == 0, demo.stderr()
    assert not Path(folder).exists()  # its temporary folder is gone
    assert processes_mentioning(folder) == []  # nodes, registry, role processes: all gone
