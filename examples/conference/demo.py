"""A conference room on one machine: a conductor and a station, an AV crew's operator key.

Everything starts on loopback (nothing leaves this machine) and writes only under one state
folder (a new temporary folder, or ``--state-dir``): the federation key, the operator key
pair, the nodes' state and runtime folders, and the station's recordings (its ``data``
folder). The station runs ``station.json``: stand-ins for the recorder and the uploader (they
print the ffmpeg and rsync commands they stand for) and a heartbeat. The operator then pushes
the same file through the conductor, signed with the operator key, and looks at the result.

    python3 examples/conference/demo.py [--state-dir DIR] [--keep-running]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STATION = "/room-a/cam1"


def stagemesh(env: dict[str, str], *argv: str) -> str:
    """Run ``stagemesh ARGV`` as the operator of this machine; return what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "mesh", "--log-level", "warning", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"stagemesh {' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


@contextmanager
def node(env: dict[str, str], *argv: str) -> Iterator[dict[str, str]]:
    """Run ``stagemesh node ARGV`` until the block ends; yield its ``ready`` fields."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mesh", "node", "--bind", "127.0.0.1", "--port", "0",
         "--no-mdns", "--no-broadcast", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("ready "):
                yield dict(part.split("=", 1) for part in line.split()[1:])
                break
        else:
            raise SystemExit(f"stagemesh node {' '.join(argv)} exited before it was ready")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.2)


def status(env: dict[str, str], url: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(stagemesh(env, "status", url, "--json"))
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=None, help="where to write (new temp)")
    parser.add_argument("--keep-running", action="store_true", help="run until Ctrl-C")
    args = parser.parse_args()
    home = args.state_dir or Path(tempfile.mkdtemp(prefix="stagemesh-conference-"))
    home.mkdir(parents=True, exist_ok=True)
    print(f"state folder: {home}")
    env = {**os.environ, "STAGEMESH_RUNTIME_DIR": str(home / "run")}
    fed_key, op_key = home / "federation.key", home / "operator.key"
    if not fed_key.exists():
        stagemesh(env, "keygen", str(fed_key))
    if not op_key.exists():
        stagemesh(env, "keygen", "--operator", str(op_key), "--comment", "demo crew")
    common = ["--federation", "conference", "--state-dir", str(home / "state"),
              "--key-file", str(fed_key), "--operator-keys", f"{op_key}.pub"]  # fmt: skip

    with (
        node(env, "--orchestra", "control", "--name", "desk", "--conductor", *common) as desk,
        node(
            env, "--orchestra", "room-a", "--name", "cam1", "--seed", desk["gossip"],
            "--roles", str(HERE / "station.json"), *common,
        ) as cam,
    ):  # fmt: skip
        wait_for(
            "the station to see the conductor",
            lambda: status(env, cam["status"])["conductor"] == "/control/desk",
        )
        print(stagemesh(env, "status", cam["status"]).rstrip())
        print("\n$ stagemesh roles push station.json --station /room-a/cam1 --operator-key ...")
        print(stagemesh(
            env, "roles", "push", str(HERE / "station.json"), "--station", STATION,
            "--node", desk["status"], "--operator-key", str(op_key),
        ).rstrip())  # fmt: skip
        print("\n$ stagemesh roles show")
        print(stagemesh(env, "roles", "show", "--node", desk["status"]).rstrip())

        def stand_in_spoke() -> bool:
            out = stagemesh(
                env, "roles", "logs", "--station", STATION, "--role", "record",
                "--uuid", "room-a-cam", "--node", cam["status"],
            )  # fmt: skip
            return "would run" in out

        wait_for("the recorder's stand-in", stand_in_spoke)
        print("\n$ stagemesh roles logs --station /room-a/cam1 --role record --uuid room-a-cam")
        print(stagemesh(
            env, "roles", "logs", "--station", STATION, "--role", "record",
            "--uuid", "room-a-cam", "--node", cam["status"],
        ).rstrip())  # fmt: skip
        data = status(env, cam["status"])["roles"]["station"]["data_dir"]
        print(f"\nrecordings go under {data}")
        if args.keep_running:
            print("running; Ctrl-C stops both nodes")
            with suppress(KeyboardInterrupt):
                signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
