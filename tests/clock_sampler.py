"""Sample one node's clock for a test: ``python tests/clock_sampler.py STATUS_URL OUT``.

Every 100 ms it reads ``/api/clock`` (federation time and the host's wall clock, read at one
instant by the node) and every second ``/api/status`` (synced, bounds, lineage, steps, the
registry's state), appending one JSON line per reading to OUT, until it is killed. It runs in
the node's network namespace (the status API listens on 127.0.0.1 there); all namespaces share
the host's clock, so the readings of different nodes can be compared by their ``host_time``.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from typing import Any


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.load(response)


def main(url: str, out: str) -> None:
    next_status = 0.0
    with open(out, "a", buffering=1) as sink:
        while True:
            started = time.monotonic()
            try:
                clock = get(url + "/api/clock")
                sink.write(json.dumps({"kind": "clock", **clock}) + "\n")
                if started >= next_status:
                    next_status = started + 1.0
                    status = get(url + "/api/status")
                    c = status["clock"]
                    reading = {
                        "kind": "status",
                        "host_time": time.time(),
                        "path": status["node"]["path"],
                        "synced": c["synced"],
                        "is_reference": c["is_reference"],
                        "error_bound": c["error_bound"],
                        "lan_error_bound": c["lan_error_bound"],
                        "lineage": c["lineage"],
                        "steps": c["steps"],
                        "registry": (status.get("registry") or {}).get("state"),
                        "conductor": status["conductor"],
                    }
                    sink.write(json.dumps(reading) + "\n")
            except OSError as exc:  # the node is busy or gone: note it, go on
                sink.write(json.dumps({"kind": "error", "error": str(exc)}) + "\n")
            time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
