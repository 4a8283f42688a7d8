"""Only the registered supernode a relayed frame is for may take it; only supernodes relay.

A real ``stagemesh registry`` process (on SQLite and on PostgreSQL) over HTTP on loopback:
alice (supernode of cmu) queues frames for bob (supernode of colorado); then everyone else
tries to read bob's queue or to inject into it, and is refused; bob gets every frame
afterwards.
"""

from __future__ import annotations

import base64

import httpx
import trio

from tests.registries import Databases, registry_http

REG = "/api/v1/federations/sleo/registrations"


async def register(http: httpx.AsyncClient, orchestra: str, name: str, **more: object) -> str:
    body = {"orchestra": orchestra, "name": name, "create": True, **more}
    answer = await http.post(REG, json=body)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["token"])


def relay(token: str) -> str:
    return f"/api/v1/registrations/{token}/relay"


async def test_someone_else_cannot_take_or_inject_relayed_frames(databases: Databases) -> None:
    with trio.fail_after(30):
        async with registry_http(databases.new()) as http:
            alice = await register(http, "cmu", "alice", supernode=True)
            bob = await register(http, "colorado", "bob", supernode=True)
            carol = await register(http, "colorado", "carol")  # bob's orchestra, a member
            mallory = await register(http, "evil", "mallory", supernode=True)
            frames = [base64.b64encode(b"signed datagram %d" % i).decode() for i in range(3)]
            sent = await http.post(relay(alice), json={"to": "/colorado/bob", "frames": frames})
            assert sent.status_code == 202, sent.text

            # a stranger guessing tokens
            for guess in ("x" * 43, bob[:-1] + ("A" if bob[-1] != "A" else "B"), "..", "%2e"):
                r = await http.post(relay(guess) + "/take", json={})
                assert r.status_code == 404, (guess, r.text)
            # a member of bob's orchestra, with its own (valid) token: not a supernode
            r = await http.post(relay(carol) + "/take", json={})
            assert r.status_code == 403 and "not registered as a supernode" in r.json()["error"]
            # another site's supernode, with its own token: only its own (empty) queue
            r = await http.post(relay(mallory) + "/take", json={})
            assert r.status_code == 200 and r.json() == {"frames": []}
            # the sender cannot take back what it queued
            r = await http.post(relay(alice) + "/take", json={})
            assert r.status_code == 200 and r.json() == {"frames": []}
            # a member may not inject into a supernode's queue, nor may an unknown token
            for token, status in ((carol, 403), ("y" * 43, 404)):
                r = await http.post(relay(token), json={"to": "/colorado/bob", "frames": frames})
                assert r.status_code == status, r.text
            # frames go only to registered supernodes
            r = await http.post(relay(mallory), json={"to": "/colorado/carol", "frames": frames})
            assert r.status_code == 404 and "no supernode /colorado/carol" in r.json()["error"]
            # a relay call needs a JSON body (a browser's cross-site form cannot make one)
            r = await http.post(relay(bob) + "/take", content=b"wait=0")
            assert r.status_code == 415

            r = await http.post(relay(bob) + "/take", json={})
            assert r.status_code == 200
            got = r.json()["frames"]
            assert [f["frame"] for f in got] == frames
            assert {f["from"] for f in got} == {"/cmu/alice"}
