"""The Python API of an embedded node: members, events, publish/subscribe, request/reply,
status and clock endpoints. Real nodes in one trio run, on loopback, joined by seeds."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

import mesh
from mesh._node import Node, NodeConfig, NoSuchMember, RemoteError, open_node
from mesh._nodecore import Publication
from mesh._status import api_secret_path, read_api_secret
from mesh._wire import Value
from tests.livenodes import loopback_config


def config(tmp: Path, name: str, seeds: tuple[tuple[str, int], ...] = ()) -> NodeConfig:
    return loopback_config(tmp, f"/o1/{name}", federation="api", seeds=seeds)


@asynccontextmanager
async def group(tmp: Path, count: int) -> AsyncIterator[list[Node]]:
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(open_node(config(tmp, "n0")))
        nodes = [first]
        for i in range(1, count):
            node = open_node(config(tmp, f"n{i}", (first.address,)))
            nodes.append(await stack.enter_async_context(node))
        with trio.fail_after(15):
            while not all(sum(m.status == "alive" for m in n.members()) == count for n in nodes):
                await trio.sleep(0.02)
        yield nodes


async def test_members_and_public_names(tmp_path: Path) -> None:
    async with group(tmp_path, 3) as nodes:
        paths = {m.path for m in nodes[2].members()}
        assert paths == {"/o1/n0", "/o1/n1", "/o1/n2"}
        assert nodes[0].member("/o1/n2") is not None
        assert nodes[0].member("/o1/nobody") is None
    assert mesh.open_node is open_node
    assert mesh.NodeConfig is NodeConfig


async def test_publish_reaches_every_node_once(tmp_path: Path) -> None:
    async with group(tmp_path, 3) as nodes, AsyncExitStack() as stack:
        inboxes = [await stack.enter_async_context(n.subscribe("tempo")) for n in nodes]
        for bpm in (120, 121, 122):
            nodes[1].publish("tempo", {"bpm": bpm})
        for inbox in inboxes:
            got: list[Publication] = []
            with trio.fail_after(5):
                while len(got) < 3:
                    got.append(await inbox.receive())
            got.sort(key=lambda p: p.number)  # gossip does not promise order; numbers do
            assert [p.payload for p in got] == [{"bpm": 120}, {"bpm": 121}, {"bpm": 122}]
            assert {p.origin_path for p in got} == {"/o1/n1"}
        # Each delivered once: nothing more arrives, even as gossip keeps retransmitting.
        with trio.move_on_after(1.0):
            extra = await inboxes[0].receive()
            raise AssertionError(f"delivered twice: {extra}")


async def test_publish_refuses_oversized_and_non_plain_payloads(tmp_path: Path) -> None:
    async with group(tmp_path, 1) as nodes:
        with pytest.raises(ValueError, match="limit"):
            nodes[0].publish("big", "x" * 5000)
        with pytest.raises(ValueError):
            nodes[0].publish("bad", {"set": {1, 2}})  # type: ignore[dict-item]


async def test_request_reply_and_typed_errors(tmp_path: Path) -> None:
    async with group(tmp_path, 2) as nodes:

        async def echo(sender: str | None, payload: Value) -> Value:
            return {"from": sender, "echo": payload}

        async def fail(sender: str | None, payload: Value) -> Value:
            raise KeyError("no such take")

        nodes[1].handle("echo", echo)
        nodes[1].handle("fail", fail)
        answer = await nodes[0].request("/o1/n1", "echo", [1, "two"])
        assert answer == {"from": "/o1/n0", "echo": [1, "two"]}
        with pytest.raises(RemoteError) as info:
            await nodes[0].request("/o1/n1", "fail", None)
        assert info.value.error_type == "KeyError"
        with pytest.raises(RemoteError) as info:
            await nodes[0].request("/o1/n1", "nope", None)
        assert info.value.error_type == "UnknownRequest" and "echo" in info.value.message
        with pytest.raises(NoSuchMember):
            await nodes[0].request("/o1/ghost", "echo", None)


async def test_events_report_joins_and_leaves(tmp_path: Path) -> None:
    async with open_node(config(tmp_path, "n0")) as first, first.events() as events:
        async with open_node(config(tmp_path, "n1", (first.address,))) as second:
            with trio.fail_after(10):
                while True:
                    event = await events.receive()
                    if isinstance(event, mesh.MemberEvent) and event.kind == "joined":
                        assert event.member.path == "/o1/n1"
                        break
                while second.member("/o1/n0") is None:  # it must know whom to tell it leaves
                    await trio.sleep(0.01)
        with trio.fail_after(5):
            while True:
                event = await events.receive()
                if isinstance(event, mesh.MemberEvent) and event.kind == "left":
                    assert event.member.path == "/o1/n1"
                    break


async def test_a_reader_behind_on_events_loses_the_newest_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As a subscriber does: a full events() channel drops the newest event, says so once
    (not once per event: a reader that stopped must not flood the log), and the node carries
    on; once the reader keeps up again, the node says how many it lost."""
    caplog.set_level(logging.INFO, logger="mesh")
    async with open_node(config(tmp_path, "n0")) as node, node.events(buffer=1) as events:
        for bpm in range(120, 130):
            node.publish("tempo", {"bpm": bpm})  # delivered to this node too: one fits
        events.receive_nowait()
        with pytest.raises(trio.WouldBlock):
            events.receive_nowait()
        dropped = [r for r in caplog.records if "events reader is behind" in r.getMessage()]
        assert [r.getMessage() for r in dropped] == ["events reader is behind; Publication dropped"]
        assert {r.levelname for r in dropped} == {"WARNING"}
        node.publish("tempo", {"bpm": 130})  # read again: the next event arrives
        with trio.fail_after(5):
            while not isinstance(event := await events.receive(), mesh.Publication):
                pass
        assert event.payload == {"bpm": 130}
        kept_up = [r.getMessage() for r in caplog.records if "kept up again" in r.getMessage()]
        assert len(kept_up) == 1, kept_up
        # the 9 publications that did not fit, and the node's own events meanwhile
        assert int(kept_up[0].removeprefix("events reader kept up again after ").split()[0]) >= 9


async def test_status_api_and_dashboard(tmp_path: Path) -> None:
    async with group(tmp_path, 2) as nodes:
        url = nodes[0].status_url
        assert url is not None
        async with httpx.AsyncClient() as client:
            doc = (await client.get(url + "/api/status")).json()
            clock = (await client.get(url + "/api/clock")).json()
            page = await client.get(url + "/")
        assert doc["node"]["path"] == "/o1/n0"
        assert set(doc) >= {"node", "members", "supernodes", "conductor", "clock", "registry"}
        member = doc["members"][1]
        assert set(member) >= {
            "id",
            "path",
            "address",
            "state",
            "incarnation",
            "supernode",
            "conductor",
            "roles",
        }
        assert set(doc["clock"]) >= {
            "federation_time",
            "offset",
            "error_bound",
            "reference",
            "synced",
        }
        assert set(clock) == {"federation_time", "host_time", "host_window"}
        assert 0.0 <= clock["host_window"] < 1.0
        assert page.status_code == 200 and "/o1/n1" in page.text
        assert doc["security"] == "open" and "OPEN federation" in page.text


async def test_status_api_forwards_requests_into_the_mesh(tmp_path: Path) -> None:
    async with group(tmp_path, 2) as nodes:

        async def echo(sender: str | None, payload: Value) -> Value:
            return {"echo": payload}

        nodes[1].handle("echo", echo)
        url = f"{nodes[0].status_url}/api/request"
        # Changing state through the API takes the node's secret (its runtime folder).
        secret = read_api_secret(tmp_path / "run", nodes[0].id)
        assert secret is not None
        mode = api_secret_path(tmp_path / "run", nodes[0].id).stat().st_mode & 0o777
        assert mode == 0o600
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(headers=headers) as client:
            ok = await client.post(url, json={"path": "/o1/n1", "kind": "echo", "payload": 7})
            missing = await client.post(url, json={"path": "/o1/zz", "kind": "echo"})
            unknown = await client.post(url, json={"path": "/o1/n1", "kind": "nope"})
            bad_json = await client.post(
                url, content=b"{not json", headers={"Content-Type": "application/json"}
            )
            bad_path = await client.post(url, json={"path": "n1", "kind": "echo"})
            anonymous = await client.post(
                url, json={"path": "/o1/n1", "kind": "echo"}, headers={"Authorization": ""}
            )
        assert anonymous.status_code == 401
        assert ok.json() == {"ok": True, "payload": {"echo": 7}}
        assert missing.status_code == 404 and missing.json()["error_type"] == "NoSuchMember"
        assert unknown.json()["error_type"] == "UnknownRequest"
        assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]
        assert bad_path.status_code == 400 and "path" in bad_path.json()["error"]
        node_id = nodes[0].id
    assert not api_secret_path(tmp_path / "run", node_id).exists()  # removed at exit


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--orchestra", "bad name"], "orchestra 'bad name' may hold only"),
        (["--seed", "host:xx"], "port 'xx' is not a number"),
        (["--key-file", "/nonexistent/key"], "cannot read key file"),
        (["--osc", "localhost:9000"], "--osc localhost:9000: give PORT or HOST:PORT"),
        (["--osc", "127.0.0.1:99999"], "the port must be 0..65535"),
        (["--osc-reply", "127.0.0.1:9001"], "--osc-reply needs --osc"),
    ],
)
def test_node_usage_errors_exit_2_with_one_line(flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mesh", "node", "--bind", "127.0.0.1", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
