"""The epoch handover (``POST /api/v1/federations/{f}/epoch``) moves a federation's time, so
only a registration of that federation may make it, as for the conductor's compare-and-set.

Each test runs a real ``stagemesh registry`` process (on SQLite and on PostgreSQL) and talks
to it over HTTP on loopback, as a node of the federation and as someone else who tries to
move the federation's time.
"""

from __future__ import annotations

import json

import httpx
import trio

from tests.registries import Databases, registry_http

EPOCH = "/api/v1/federations/sleo/epoch"
ELAPSED = "/api/v1/federations/sleo/elapsed"


async def register(http: httpx.AsyncClient, federation: str, name: str) -> str:
    answer = await http.post(
        f"/api/v1/federations/{federation}/registrations",
        json={"orchestra": "cmu", "name": name, "create": True},
    )
    assert answer.status_code == 201, answer.text
    token: str = answer.json()["token"]
    return token


async def test_a_stranger_cannot_move_a_federations_time(databases: Databases) -> None:
    with trio.fail_after(30):
        async with registry_http(databases.new()) as http:
            member = await register(http, "sleo", "alice")
            before = (await http.get(ELAPSED)).json()
            assert before["lineage"].startswith("registry-")
            # an hour earlier: every node of the federation would step its clock by an hour
            forged = {"epoch": before["epoch"] - 3600.0, "lineage": "mallory"}

            # someone else: a registration of another federation, a made-up token, none
            stranger = await register(http, "other", "mallory")
            for token in (stranger, "A" * 43):
                refused = await http.post(EPOCH, json={**forged, "token": token})
                assert refused.status_code == 404, refused.text
                assert refused.json()["error"] == "unknown or expired registration token"
            refused = await http.post(EPOCH, json=forged)
            assert refused.status_code == 400, refused.text
            assert "'token'" in refused.json()["error"]
            # a page in a browser, cross-site, with a member's token (no preflight for
            # text/plain): refused before the body is read
            refused = await http.post(
                EPOCH,
                content=json.dumps({**forged, "token": member}),
                headers={"Content-Type": "text/plain"},
            )
            assert refused.status_code == 415, refused.text

            after = (await http.get(ELAPSED)).json()
            assert (after["epoch"], after["lineage"]) == (before["epoch"], before["lineage"])

            # the member itself may hand over an older time
            taken = await http.post(EPOCH, json={**forged, "token": member, "lineage": "ours"})
            assert taken.status_code == 200 and taken.json()["accepted"], taken.text
            now = (await http.get(ELAPSED)).json()
            assert (now["epoch"], now["lineage"]) == (forged["epoch"], "ours")
            assert now["elapsed"] >= 3600.0


async def test_an_expired_registration_cannot_move_the_time(databases: Databases) -> None:
    with trio.fail_after(30):
        async with registry_http(databases.new()) as http:
            token = await register(http, "sleo", "alice")
            keep = await register(http, "sleo", "bob")  # keeps the federation's epoch
            before = (await http.get(ELAPSED)).json()
            gone = await http.delete(f"/api/v1/registrations/{token}")
            assert gone.status_code == 200
            offer = {"token": token, "epoch": before["epoch"] - 60.0, "lineage": "late"}
            refused = await http.post(EPOCH, json=offer)
            assert refused.status_code == 404, refused.text
            assert (await http.get(ELAPSED)).json()["epoch"] == before["epoch"]
            assert (await http.post(EPOCH, json={**offer, "token": keep})).json()["accepted"]
