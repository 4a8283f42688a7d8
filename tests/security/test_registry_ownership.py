"""Finding 12: registration tokens own registrations, and the conductor follows them.

Each test runs a real ``stagemesh registry`` process (on SQLite and on PostgreSQL) and talks
to it over HTTP on loopback, as the owner of a registration and as someone else who tries to
remove it, take its path or its conductor post.
"""

from __future__ import annotations

from typing import Any

import httpx
import trio

from tests.registries import Databases, registry_http

REG = "/api/v1/federations/sleo/registrations"
CAS = "/api/v1/federations/sleo/conductor"


async def register(http: httpx.AsyncClient, name: str, **fields: Any) -> httpx.Response:
    body = {"orchestra": "cmu", "name": name, "create": True, **fields}
    return await http.post(REG, json=body)


async def nodes(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    view = (await http.get("/api/v1/federations/sleo")).json()
    return {n["path"]: n for o in view["orchestras"] for n in o["nodes"]}


async def test_legacy_calls_cannot_remove_or_take_over_a_json_registration(
    databases: Databases,
) -> None:
    with trio.fail_after(30):
        async with registry_http(databases.new()) as http:
            owner = await register(http, "alice", node_id="node-a", conductor=True)
            assert owner.status_code == 201 and owner.json()["conductor_granted"]
            token = owner.json()["token"]

            # someone else, with the 2012 API: unregister alice (which would free the post)
            evict = await http.get(
                "/unregister", params={"federation": "sleo", "orchestra": "cmu", "name": "alice"}
            )
            assert evict.status_code == 403, evict.text
            assert evict.text.startswith("Error: /cmu/alice was registered with a token")
            # ... or register over her path as a conductor
            take = await http.get(
                "/register",
                params={
                    "federation": "sleo",
                    "orchestra": "cmu",
                    "name": "alice",
                    "conductor": "yes",
                },
            )
            assert take.status_code == 409, take.text
            assert take.text.startswith("Error: /cmu/alice is registered by node node-a")

            held = await nodes(http)
            assert held["/cmu/alice"]["node_id"] == "node-a"
            assert (await http.get(CAS)).json()["holder"] == "/cmu/alice"
            beat = await http.post(f"/api/v1/registrations/{token}/heartbeat")
            assert beat.status_code == 200


async def test_a_path_held_with_a_node_id_cannot_be_taken_without_it(databases: Databases) -> None:
    with trio.fail_after(30):
        async with registry_http(databases.new()) as http:
            owner = await register(http, "alice", node_id="node-a", supernode=True)
            assert owner.status_code == 201
            for attempt in ({}, {"node_id": "node-b"}):
                taken = await register(http, "alice", supernode=True, takeover=True, **attempt)
                assert taken.status_code == 409, (attempt, taken.text)
                assert "already registered by node node-a" in taken.json()["error"]
            assert (await nodes(http))["/cmu/alice"]["node_id"] == "node-a"
            # the owner itself (a restart that lost its token) may register again
            again = await register(http, "alice", node_id="node-a", supernode=True)
            assert again.status_code == 201 and again.json()["supernode_granted"]


async def test_conductor_compare_and_set_needs_the_claimants_token(databases: Databases) -> None:
    with trio.fail_after(30):
        async with registry_http(databases.new()) as http:
            a = (await register(http, "alice", node_id="node-a", conductor=True)).json()
            b = (await register(http, "bob", node_id="node-b")).json()
            assert a["conductor_granted"] and a["conductor_term"] == 1

            # anonymous: release the post, or give it to bob
            for holder in (None, "/cmu/bob"):
                anon = await http.post(CAS, json={"expected_term": 1, "holder": holder})
                assert anon.status_code == 400, anon.text
                assert "token" in anon.json()["error"]
            forged = await http.post(
                CAS, json={"token": "not-a-token", "expected_term": 1, "holder": None}
            )
            assert forged.status_code == 404
            # bob's own token: release alice's post, take it, or name alice while holding it
            for holder in (None, "/cmu/bob", "/cmu/alice"):
                r = await http.post(
                    CAS, json={"token": b["token"], "expected_term": 1, "holder": holder}
                )
                assert r.status_code == 403, (holder, r.text)
            state = (await http.get(CAS)).json()
            assert state["holder"] == "/cmu/alice" and state["term"] == 1

            # alice releases with her token; then bob claims it for himself with his
            freed = await http.post(
                CAS, json={"token": a["token"], "expected_term": 1, "holder": None}
            )
            assert freed.status_code == 200 and freed.json()["term"] == 2
            claim = await http.post(
                CAS, json={"token": b["token"], "expected_term": 2, "holder": "/cmu/bob"}
            )
            assert claim.status_code == 200
            assert claim.json()["holder"] == "/cmu/bob" and claim.json()["node_id"] == "node-b"
            assert (await nodes(http))["/cmu/bob"]["conductor"] is True


async def test_anonymous_legacy_gets_cannot_squat_the_conductor_of_a_bridged_federation(
    databases: Databases,
) -> None:
    with trio.fail_after(30):
        async with registry_http(databases.new()) as http:
            # a bridged orchestra's supernode is registered (no conductor candidate yet)
            sup = await register(http, "alice", node_id="node-a", supernode=True)
            assert sup.status_code == 201

            # three anonymous GETs: the federation, an orchestra, a conductor registration
            squat = {"federation": "sleo", "orchestra": "squat"}
            await http.get("/federation", params={"federation": "sleo", "create": "yes"})
            await http.get("/orchestra", params={**squat, "create": "yes"})
            first = await http.get("/register", params={**squat, "name": "x", "conductor": "yes"})
            assert first.status_code == 200  # free, so granted (the 2012 rule) ...

            # ... until a node with a token claims it: the stagemesh candidate gets the post
            cand = await register(http, "carol", node_id="node-c", conductor=True)
            assert cand.status_code == 201
            assert cand.json()["conductor_granted"] is True, cand.json()
            assert (await http.get(CAS)).json()["holder"] == "/cmu/carol"

            # the squatter asking again is told who holds it, and registered as a plain node
            again = await http.get("/register", params={**squat, "name": "x", "conductor": "yes"})
            assert again.status_code == 409
            assert "/cmu/carol" in again.text.splitlines()[0]
            assert (await nodes(http))["/squat/x"]["conductor"] is False
            assert (await http.get(CAS)).json()["holder"] == "/cmu/carol"
