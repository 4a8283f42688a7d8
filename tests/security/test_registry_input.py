"""Finding 14: input the registry refuses (a clear 4xx), never a 500, a stored oddity or a
forged line in a 2012 client's answer.

A real ``stagemesh registry`` process (on SQLite and on PostgreSQL) over HTTP on loopback, sent
what a hostile client would.
"""

from __future__ import annotations

from typing import Any

import httpx
import trio

from registry_bridge import RegistryStore
from tests.registries import Databases, registry_http

REG = "/api/v1/federations/sleo/registrations"
LEGACY = {"federation": "sleo", "orchestra": "cmu"}


async def setup(http: httpx.AsyncClient) -> None:
    await http.get("/federation", params={"federation": "sleo", "create": "yes"})
    await http.get("/orchestra", params={**LEGACY, "create": "yes"})


async def paths(http: httpx.AsyncClient) -> list[str]:
    view = (await http.get("/api/v1/federations/sleo")).json()
    return [n["path"] for o in view["orchestras"] for n in o["nodes"]]


async def test_legacy_port_must_be_ascii_digits_in_range(databases: Databases) -> None:
    with trio.fail_after(30):
        async with registry_http(databases.new()) as http:
            await setup(http)
            for port in ["\u00b2", "\u0663", "7" * 5000, "0", "65536", "-1", "+80", " 80", "8_0"]:
                r = await http.get("/register", params={**LEGACY, "name": "n", "port": port})
                assert r.status_code == 400, (port[:10], r.status_code)
                assert r.text.startswith("Error: port must be") and len(r.text) < 200
            assert await paths(http) == []
            ok = await http.get("/register", params={**LEGACY, "name": "n", "port": "65535"})
            assert ok.status_code == 200


async def test_hosts_are_bounded_ip_literals_and_cannot_forge_a_line(databases: Databases) -> None:
    forged = "fe80::1%x\nConductor:\nsleo evil evil 6.6.6.6 7471"
    with trio.fail_after(30):
        async with registry_http(databases.new()) as http:
            await setup(http)
            bad = [forged, "fe80::1%" + "x" * 60_000, "10.0.0.1\r\n", "a" * 60_000, "my-laptop"]
            for host in bad:
                body: dict[str, Any] = {"orchestra": "cmu", "name": "evil", "host": host}
                r = await http.post(REG, json={**body, "conductor": True, "supernode": True})
                assert r.status_code == 400, (host[:20], r.status_code)
                assert "host must be an IP address" in r.json()["error"]
                assert len(r.text) < 300
            assert await paths(http) == []
            # a 2012 client's answer holds only what was registered
            r = await http.get("/register", params={**LEGACY, "name": "rbd", "conductor": "no"})
            assert r.status_code == 200 and "6.6.6.6" not in r.text and "evil" not in r.text
            assert r.text.count("\n") == 2  # "Registered ...", "Elapsed: ..."
            good = await http.post(
                REG, json={"orchestra": "cmu", "name": "v6", "host": "2001:db8::7"}
            )
            assert good.status_code == 201


async def test_dot_names_are_refused_everywhere(databases: Databases) -> None:
    with trio.fail_after(30):
        async with registry_http(databases.new()) as http:
            for name in (".", ".."):
                j = await http.post("/api/v1/federations", json={"name": name})
                assert j.status_code == 400 and "'.' or '..'" in j.json()["error"], name
                legacy = await http.get("/federation", params={"federation": name, "create": "yes"})
                assert legacy.status_code == 400, name
                node = await http.post(
                    "/api/v1/federations/f/registrations",
                    json={"orchestra": name, "name": "n", "create": True},
                )
                assert node.status_code == 400, name
            assert (await http.get("/api/v1/federations")).json()["federations"] == []
            # names with dots that are not path segments of their own stay valid
            assert (await http.post("/api/v1/federations", json={"name": "..a"})).status_code == 201


async def test_json_writes_need_application_json(databases: Databases) -> None:
    body = b'{"orchestra": "cmu", "name": "alice", "create": true}'
    with trio.fail_after(30):
        async with registry_http(databases.new()) as http:
            writes = [
                ("/api/v1/federations", b'{"name": "x"}'),
                ("/api/v1/federations/sleo/orchestras", b'{"name": "cmu"}'),
                (REG, body),
                ("/api/v1/federations/sleo/conductor", b'{"expected_term": 0, "holder": null}'),
            ]
            for ctype in (None, "text/plain", "application/x-www-form-urlencoded"):
                headers = {} if ctype is None else {"content-type": ctype}
                for path, raw in writes:
                    r = await http.post(path, content=raw, headers=headers)
                    assert r.status_code == 415, (path, ctype, r.status_code)
                    assert "application/json" in r.json()["error"]
            assert (await http.get("/api/v1/federations")).json()["federations"] == []
            r = await http.post(REG, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 201


async def test_head_never_writes(databases: Databases) -> None:
    with trio.fail_after(30):
        async with registry_http(databases.new()) as http:
            created = await http.head("/federation", params={"federation": "x", "create": "yes"})
            assert created.status_code == 405
            assert (await http.get("/federation", params={"federation": "x"})).text == "-1\n"
            await setup(http)
            r = await http.head("/register", params={**LEGACY, "name": "rbd", "conductor": "yes"})
            assert r.status_code == 405 and r.headers["allow"] == "GET"
            assert await paths(http) == []
            await http.get("/register", params={**LEGACY, "name": "rbd"})
            gone = await http.head("/unregister", params={**LEGACY, "name": "rbd"})
            assert gone.status_code == 405
            assert await paths(http) == ["/cmu/rbd"]
            # reading pages with HEAD still works
            assert (await http.head("/federations/sleo")).status_code == 200


async def test_node_ids_cannot_forge_a_line(databases: Databases) -> None:
    forged = "x\nConductor:\nsleo cmu /cmu/evil 6.6.6.6 7471"
    db = databases.new()
    # a registration stored by a registry older than the check, with such a node id
    old = RegistryStore(db)
    old.register("sleo", "cmu", "old", host="10.0.0.1", port=1, node_id=forged, create=True)
    old.close()
    with trio.fail_after(30):
        async with registry_http(db, "--ttl", "3600") as http:
            for node_id in (forged, "a\rb", "a\u2028b", "a\x85b", "\x1b[2J", "x" * 129, ""):
                body = {"orchestra": "cmu", "name": "evil", "node_id": node_id}
                r = await http.post(REG, json=body)
                assert r.status_code == 400, (node_id[:10], r.status_code)
                assert r.json()["error"].startswith("node_id must be 1-128 characters without")
                assert len(r.text) < 300
            assert await paths(http) == ["/cmu/old"]
            # the old one's node id reaches a 2012 client in a refusal: as one line
            for url in ("/register", "/unregister"):
                r = await http.get(url, params={**LEGACY, "name": "old"})
                assert r.status_code in (403, 409) and r.text.count("\n") == 1, r.text
                assert r.text.startswith("Error: /cmu/old ") and "x\\nConductor:\\n" in r.text
            ok = await http.post(REG, json={"orchestra": "cmu", "name": "n", "node_id": "é ü-1"})
            assert ok.status_code == 201
