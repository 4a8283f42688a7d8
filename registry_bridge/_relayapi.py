"""The relay's HTTP calls: supernodes of sites that cannot reach each other pass gossip here.

- ``POST /api/v1/registrations/{token}/relay`` ``{"to": "/colorado/bob", "frames": [b64...]}``:
  the supernode holding *token* queues datagrams for the supernode registered at ``to``
  (202 ``{"to", "queued", "dropped"}``).
- ``POST /api/v1/registrations/{token}/relay/take`` ``{"wait": seconds}``: the supernode
  holding *token* takes what is queued for it (200 ``{"frames": [{"from", "frame", "age"}]}``),
  waiting up to ``wait`` seconds (at most :data:`MAX_WAIT`) for a first frame: a long poll.

Frames are base64 in JSON. What is queued lives in the database
(``registry_bridge._relaystore``), so a long poll served by one registry process sees a frame
queued through another: while it waits, it looks at the queue every :data:`POLL_INTERVAL`
seconds (each look is one short transaction), and at once when this process queued anything
(a wake-up only: what the take returns is always read from the database).
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from registry_bridge._app import (
    HttpError,
    _check_token,
    _Fields,
    _json,
    _Registry,
    _require_json,
)
from registry_bridge._relaystore import BATCH_LIMIT, FRAME_MAX

__all__ = ["MAX_WAIT", "POLL_INTERVAL", "RelayApi"]

MAX_WAIT = 25.0
"""The longest a take waits for a first frame (below common proxies' idle timeouts)."""
POLL_INTERVAL = 0.2
"""How often a waiting take looks at the queue in the database (a frame queued through another
registry process waits at most this long; one queued through this process wakes it at once)."""
_B64_MAX = (FRAME_MAX + 2) // 3 * 4


def _frames(value: object) -> list[bytes]:
    if not isinstance(value, list) or not 1 <= len(value) <= BATCH_LIMIT:
        raise HttpError(400, f"field 'frames' must be a list of 1 to {BATCH_LIMIT} base64 strings")
    out = []
    for item in value:
        if not isinstance(item, str) or not 4 <= len(item) <= _B64_MAX:
            raise HttpError(400, f"field 'frames': each must be base64 of 1 to {FRAME_MAX} bytes")
        try:
            out.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise HttpError(400, "field 'frames': a frame is not valid base64") from None
    return out


class RelayApi:
    """The relay's handlers over the registry's store (see the module's docstring)."""

    def __init__(self, registry: _Registry) -> None:
        self.reg = registry
        self._queued: anyio.Event | None = None
        """Set (and replaced) whenever this process queued frames: waiting takes look again."""

    def _wake_takes(self) -> None:
        if self._queued is not None:
            self._queued.set()
            self._queued = None

    async def _wait_for_news(self, seconds: float) -> None:
        if self._queued is None:
            self._queued = anyio.Event()
        with anyio.move_on_after(seconds):
            await self._queued.wait()

    async def queue(self, request: Request) -> Response:
        """Queue frames for another site's supernode."""
        token = _check_token(request.path_params["token"])
        _require_json(request.headers.get("content-type"))
        fields = _Fields(await self.reg.json_body(request), {"to", "frames"})
        to = fields.body.get("to")
        if not isinstance(to, str):
            raise HttpError(400, "field 'to' must be a path /<orchestra>/<name> (a string)")
        frames = _frames(fields.body.get("frames"))
        answer = await self.reg.store.call(self.reg.raw.relay_queue, token, to, frames)
        self._wake_takes()
        return _json(answer, 202)

    async def take(self, request: Request) -> Response:
        """Take the frames queued for this supernode, waiting for a first one if asked."""
        token = _check_token(request.path_params["token"])
        _require_json(request.headers.get("content-type"))
        fields = _Fields(await self.reg.json_body(request), {"wait"})
        wait = fields.body.get("wait", 0)
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= MAX_WAIT:
            raise HttpError(400, f"field 'wait' must be a number of seconds from 0 to {MAX_WAIT:g}")
        deadline = time.monotonic() + float(wait)
        while True:
            taken: list[dict[str, Any]] = await self.reg.store.call(self.reg.raw.relay_take, token)
            if taken or time.monotonic() >= deadline or await request.is_disconnected():
                break
            await self._wait_for_news(min(POLL_INTERVAL, deadline - time.monotonic()))
        frames = [
            {
                "from": f["from"],
                "frame": base64.b64encode(f["frame"]).decode(),
                "age": round(f["age"], 6),
            }
            for f in taken
        ]
        return _json({"frames": frames})
