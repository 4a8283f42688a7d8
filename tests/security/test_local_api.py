"""Issue #18, findings 3 and 10: the node's local HTTP API.

A real station node on loopback. Someone other than the machine's operator tries to change it
through ``POST /api/request``: a local process without the node's secret, a web page the
operator visits (a cross-site "simple" request: ``text/plain``, a foreign ``Origin``), a page
reached by DNS rebinding (a foreign ``Host``); and a 200 MiB body must not be buffered. Each is
refused; the node's own operator, with the secret, is not.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.harness import wait_for
from tests.livenodes import LiveNode, start_nodes
from tests.security.roles_hosts import secret_of, station_args

pytestmark = pytest.mark.slow

STATION = "/room/station"
MIB = 1024 * 1024


def apply_body(marker: Path) -> dict[str, Any]:
    config = {"command": {"pwn": {"command": ["sh", "-c", f"echo pwned > {marker}"]}}}
    return {"path": STATION, "kind": "roles.apply", "payload": {"config": config}}


async def instances(node: LiveNode) -> list[str]:
    doc = (await node.status())["roles"]["station"]
    return [f"{i['role']}/{i['uuid']}" for i in doc["instances"]]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_only_the_operator_with_the_secret_changes_the_node(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    async with start_nodes(tmp_path, ["station"], station_args(tmp_path), orchestra="room") as (
        node,
    ):
        url = node.status_url + "/api/request"
        body = json.dumps(apply_body(marker))
        secret = secret_of(node)
        json_type = {"Content-Type": "application/json"}
        port = url.split(":")[2].split("/")[0]
        async with httpx.AsyncClient(timeout=30) as client:
            tries = {
                # A local process that cannot read the node's secret.
                "no secret": await client.post(url, content=body, headers=json_type),
                "wrong secret": await client.post(
                    url, content=body, headers={**json_type, "Authorization": "Bearer guess"}
                ),
                # A web page the operator visits: a "simple" cross-site request.
                "cross-site text/plain": await client.post(
                    url,
                    content=body,
                    headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
                ),
                # Even a request carrying the secret is refused with each sign of a browser.
                "foreign Origin": await client.post(
                    url,
                    content=body,
                    headers={
                        **json_type,
                        "Authorization": f"Bearer {secret}",
                        "Origin": "http://evil.example",
                    },
                ),
                "text/plain": await client.post(
                    url,
                    content=body,
                    headers={"Content-Type": "text/plain", "Authorization": f"Bearer {secret}"},
                ),
                "DNS rebinding": await client.post(
                    url,
                    content=body,
                    headers={
                        **json_type,
                        "Authorization": f"Bearer {secret}",
                        "Host": f"evil.example:{port}",
                    },
                ),
                "cross-site fetch": await client.post(
                    url,
                    content=body,
                    headers={
                        **json_type,
                        "Authorization": f"Bearer {secret}",
                        "Sec-Fetch-Site": "cross-site",
                    },
                ),
            }
            codes = {name: response.status_code for name, response in tries.items()}
            assert codes == {
                "no secret": 401,
                "wrong secret": 401,
                "cross-site text/plain": 403,
                "foreign Origin": 403,
                "text/plain": 415,
                "DNS rebinding": 403,
                "cross-site fetch": 403,
            }, {name: r.text for name, r in tries.items()}
            assert "secret" in tries["no secret"].json()["error"]
            assert await instances(node) == [] and not marker.exists()
            refused = (await node.status())["local_api"]["refused"]
            assert refused == {"secret": 2, "origin": 3, "content-type": 1, "host": 1}

            # Reading stays open; the operator (the secret, JSON, no Origin) changes the node.
            assert (await client.get(node.status_url + "/api/status")).status_code == 200
            allowed = await client.post(
                url,
                json={**apply_body(marker), "payload": {"config": {}}},
                headers={"Authorization": f"Bearer {secret}"},
            )
            assert allowed.json()["ok"] is True, allowed.text


async def raw_post(url: str, headers: dict[str, str], size: int, *, chunked: bool) -> str:
    """POST *size* bytes to *url* over a plain socket, a MiB at a time, as a hostile client
    would (``Transfer-Encoding: chunked``, or a ``Content-Length``); stop sending as soon as
    the node answers or hangs up. Return the status code (or ``"closed"``)."""
    host, _, rest = url.removeprefix("http://").partition(":")
    port, _, path = rest.partition("/")
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(size)}
    head = f"POST /{path} HTTP/1.1\r\nHost: {host}:{port}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in {**headers, **framing}.items()
    )
    block = b"x" * MIB
    piece = b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
    answer = "closed"
    stream = await trio.open_tcp_stream(host, int(port))
    with trio.fail_after(60):
        async with stream:
            await stream.send_all(head.encode() + b"\r\n")

            async def send() -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    for _ in range(size // MIB):
                        await stream.send_all(piece)
                    if chunked:
                        await stream.send_all(b"0\r\n\r\n")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                with contextlib.suppress(trio.BrokenResourceError, OSError):
                    data = await stream.receive_some(65536)
                    if data.startswith(b"HTTP/1.1 "):
                        answer = data.split(b" ", 2)[1].decode()
                nursery.cancel_scope.cancel()
    return answer


async def test_a_huge_body_is_refused_while_it_is_read(tmp_path: Path) -> None:
    """Finding 10: a 200 MiB body, streamed without a length and with a false small one,
    and declared with its real length; the node never holds it in memory."""
    async with start_nodes(tmp_path, ["station"], station_args(tmp_path), orchestra="room") as (
        node,
    ):
        pid = node.process.pid
        url = node.status_url + "/api/request"
        headers = {"Authorization": f"Bearer {secret_of(node)}", "Content-Type": "application/json"}
        before = rss_kib(pid)
        outcomes = [
            await raw_post(url, headers, 200 * MIB, chunked=chunked) for chunked in (True, False)
        ]
        async with httpx.AsyncClient(timeout=60) as client:
            grown = (rss_kib(pid) - before) / 1024
            print(f"RSS before {before / 1024:.0f} MiB, grown {grown:.1f} MiB: {outcomes}")
            assert grown < 20, f"the node grew by {grown:.0f} MiB"
            assert set(outcomes) <= {"413", "closed"} and "413" in outcomes, outcomes
            await wait_for(lambda: node.process.returncode is None, 1, "the node still running")
            assert (await client.get(node.status_url + "/api/status")).status_code == 200
