"""The 2012 client flow against a real registry socket, parsing text like the old client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from registry_bridge import RegistryStore, create_app, serve_registry
from tests.registries import Databases, running_registry


@pytest.fixture
async def base(databases: Databases) -> AsyncIterator[str]:
    store = RegistryStore(databases.new())
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            lambda task_status: serve_registry(
                create_app(store),
                "127.0.0.1:0",
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        yield url
        stop.set()
    store.close()


async def get(http: httpx.AsyncClient, path: str, **params: str) -> tuple[int, str]:
    r = await http.get(path, params=params)
    assert r.headers["content-type"].startswith("text/plain")
    return r.status_code, r.text


def find_supernode(text: str) -> tuple[str, str] | None:
    """What the 2012 client did: find 'Your supernode:', take fields 3 and 4 of the next line."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "Your supernode:":
            fields = lines[i + 1].split()
            return fields[2], fields[3]
    return None


async def test_2012_client_flow(base: str) -> None:
    with trio.fail_after(20):
        async with httpx.AsyncClient(base_url=base) as http:
            assert await get(http, "/federation", federation="sleo") == (200, "-1\n")
            status, fid = await get(http, "/federation", federation="sleo", create="yes")
            assert status == 200 and int(fid) > 0
            assert await get(http, "/federation", federation="sleo") == (200, fid)
            assert await get(http, "/orchestra", federation="sleo", orchestra="cmu") == (
                200,
                "-1\n",
            )
            status, oid = await get(
                http, "/orchestra", federation="sleo", orchestra="cmu", create="yes"
            )
            assert status == 200 and int(oid) > 0

            status, text = await get(
                http,
                "/register",
                federation="sleo",
                orchestra="cmu",
                name="alice",
                supernode="yes",
                conductor="yes",
                port="7471",
            )
            assert status == 200
            lines = text.splitlines()
            assert lines[0] == "Registered /cmu/alice as supernode and conductor in federation sleo"
            assert lines[1].startswith("Elapsed: ")
            assert len(lines[1].split()[1].split(".")[1]) == 6
            assert "Other supernodes:" in lines and find_supernode(text) is None

            status, text = await get(
                http,
                "/register",
                federation="sleo",
                orchestra="cmu",
                name="rbd",
                supernode="no",
                conductor="no",
            )
            assert status == 200
            assert text.splitlines()[0] == "Registered /cmu/rbd as node in federation sleo"
            assert find_supernode(text) == ("/cmu/alice", "127.0.0.1")
            assert "Conductor:\nsleo cmu /cmu/alice 127.0.0.1 7471\n" in text

            status, text = await get(
                http,
                "/register",
                federation="sleo",
                orchestra="cmu",
                name="bob",
                supernode="no",
                conductor="yes",
            )
            # refused the conductor, bob is registered as a plain node all the same, and told
            lines = text.splitlines()
            assert status == 409
            assert lines[0] == (
                "Registered /cmu/bob as node in federation sleo,"
                " not as conductor: /cmu/alice already is the conductor"
            )
            assert find_supernode(text) == ("/cmu/alice", "127.0.0.1")
            assert lines[-2:] == ["Conductor:", "sleo cmu /cmu/alice 127.0.0.1 7471"]

            status, text = await get(
                http,
                "/register",
                federation="sleo",
                orchestra="cmu",
                name="carol",
                supernode="yes",
            )
            assert status == 200
            assert text.splitlines()[0] == (
                "Registered /cmu/carol as node in federation sleo,"
                " not as supernode: /cmu/alice is already orchestra cmu's supernode"
            )
            assert find_supernode(text) == ("/cmu/alice", "127.0.0.1")

            assert await get(
                http, "/unregister", federation="sleo", orchestra="cmu", name="alice"
            ) == (200, "OK\n")
            status, text = await get(
                http,
                "/register",
                federation="sleo",
                orchestra="cmu",
                name="bob",
                supernode="no",
                conductor="yes",
            )
            assert status == 200 and "as node and conductor" in text
            assert find_supernode(text) is None  # alice (the supernode) left


async def test_legacy_bad_input_is_400_with_error_line(base: str) -> None:
    with trio.fail_after(20):
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await get(http, "/federation"))[0] == 400
            status, text = await get(http, "/federation", federation="bad name")
            assert status == 400 and text.startswith("Error: federation 'bad name' may hold")
            status, text = await get(http, "/federation", federation="f", create="maybe")
            assert (status, text) == (400, "Error: create must be yes or no, not 'maybe'\n")
            status, text = await get(http, "/register", federation="nope", orchestra="o", name="n")
            assert (status, text) == (400, "Error: no federation 'nope'\n")
            await get(http, "/orchestra", federation="f", orchestra="o", create="yes")
            assert (await get(http, "/orchestra", federation="f", orchestra="o", create="yes"))[
                0
            ] == 400
            await get(http, "/federation", federation="f", create="yes")
            await get(http, "/orchestra", federation="f", orchestra="o", create="yes")
            status, text = await get(
                http, "/register", federation="f", orchestra="o", name="n", port="99999"
            )
            assert status == 400 and "port" in text
            for port in ["\u00b2", "1" * 5000, "0x50"]:
                status, text = await get(
                    http, "/register", federation="f", orchestra="o", name="n", port=port
                )
                assert status == 400 and text.startswith("Error: port must be"), port[:5]
            status, text = await get(http, "/register", federation="f", orchestra="o")
            assert (status, text) == (400, "Error: missing parameter name\n")


DOCS = Path(__file__).resolve().parent.parent / "docs" / "registry.md"


def doc_blocks_after(marker: str) -> tuple[str, str]:
    """The shell block after *marker* in docs/registry.md and the output block after it."""
    text = DOCS.read_text()
    rest = text[text.index(marker) :]
    blocks = re.findall(r"```(\w*)\n(.*?)```", rest, re.S)
    (lang, script), (_, output) = blocks[0], blocks[1]
    assert lang == "sh"
    return script, output


async def test_the_documented_curl_lines_run_the_2012_flow(databases: Databases) -> None:
    script, expected = doc_blocks_after("### The 2012 flow with curl")
    with trio.fail_after(30):
        async with running_registry(databases.new()) as url:
            # the reader sets REGISTRY to their registry's URL: so does the test
            pasted = re.sub(r"^REGISTRY=\S+", f"REGISTRY={url}", script, count=1, flags=re.M)
            assert pasted != script
            done = await trio.run_process(
                ["bash", "-e", "-c", pasted], capture_stdout=True, capture_stderr=True
            )
    out = done.stdout.decode()
    elapsed = re.compile(r"^Elapsed: \d+\.\d{6}$", re.M)
    assert elapsed.search(out), out
    assert elapsed.sub("Elapsed: X", out) == elapsed.sub("Elapsed: X", expected)
