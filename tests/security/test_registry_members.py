"""Members reports (a supernode's heartbeat carries its orchestra's members): only the
registration of an orchestra's supernode speaks for that orchestra, reports are bounded and
checked field by field, and a report goes with its registration.

Each test runs a real ``stagemesh registry`` process (on SQLite and on PostgreSQL) and talks
to it over HTTP on loopback, as the supernode and as someone else who tries to report.
"""

from __future__ import annotations

from typing import Any

import httpx
import trio

from registry_bridge._members import MAX_MEMBERS
from tests.livenodes import wait_for
from tests.registries import Databases, registry_http

FED = "/api/v1/federations/sleo"


async def register(http: httpx.AsyncClient, orchestra: str, name: str, **more: Any) -> str:
    body = {"orchestra": orchestra, "name": name, "create": True, **more}
    answer = await http.post(f"{FED}/registrations", json=body)
    assert answer.status_code == 201, answer.text
    token: str = answer.json()["token"]
    return token


def report(orchestra: str, *names: str) -> dict[str, Any]:
    return {
        "members": [{"path": f"/{orchestra}/{n}", "state": "alive", "posts": []} for n in names]
    }


async def members(http: httpx.AsyncClient) -> dict[str, list[dict[str, Any]]]:
    view = (await http.get(FED)).json()
    return {o["name"]: o["members"] for o in view["orchestras"]}


async def beat(http: httpx.AsyncClient, token: str, body: object) -> httpx.Response:
    return await http.post(f"/api/v1/registrations/{token}/heartbeat", json=body)


async def test_only_the_orchestras_supernode_reports_its_members(databases: Databases) -> None:
    with trio.fail_after(60):
        async with registry_http(databases.new()) as http:
            sup = await register(http, "cmu", "hub", supernode=True)
            plain = await register(http, "cmu", "eve")
            other = await register(http, "ucsd", "hub", supernode=True)
            ok = await beat(http, sup, report("cmu", "hub", "rbd", "tom"))
            assert ok.status_code == 200, ok.text
            mine = (await members(http))["cmu"]
            assert [m["path"] for m in mine] == ["/cmu/hub", "/cmu/rbd", "/cmu/tom"]
            assert {m["reported_by"] for m in mine} == {"/cmu/hub"}

            # a stranger without a registration
            unknown = await beat(http, "not-a-token", report("cmu", "mallory"))
            assert unknown.status_code == 404, unknown.text
            # a plain node of the orchestra
            refused = await beat(http, plain, report("cmu", "mallory"))
            assert refused.status_code == 403, refused.text
            assert "only the supernode's registration reports members" in refused.json()["error"]
            # another orchestra's supernode, speaking for cmu
            foreign = await beat(http, other, report("cmu", "mallory"))
            assert foreign.status_code == 403, foreign.text
            assert foreign.json()["error"].startswith("members[0].path /cmu/mallory is not of")

            after = await members(http)
            assert [m["path"] for m in after["cmu"]] == ["/cmu/hub", "/cmu/rbd", "/cmu/tom"]
            assert after["ucsd"] == []


async def test_reports_are_bounded_and_checked_field_by_field(databases: Databases) -> None:
    with trio.fail_after(60):
        async with registry_http(databases.new()) as http:
            sup = await register(http, "cmu", "hub", supernode=True)
            too_many = report("cmu", *(f"n{i}" for i in range(MAX_MEMBERS + 1)))
            bad: list[tuple[object, str]] = [
                (too_many, f"members holds {MAX_MEMBERS + 1} entries; the limit is {MAX_MEMBERS}"),
                ({"members": "all"}, "members must be a list"),
                ({"members": [{"path": "/cmu/a", "state": "asleep"}]}, "members[0].state must"),
                ({"members": [{"path": "/cmu/a b", "state": "alive"}]}, "members[0].path name"),
                ({"members": [{"path": "cmu", "state": "alive"}]}, "members[0].path must be"),
                (
                    {"members": [{"path": "/cmu/a", "state": "alive", "posts": ["x y"]}]},
                    "members[0].posts",
                ),
                (
                    {"members": [{"path": "/cmu/a", "state": "alive", "extra": 1}]},
                    "members[0] has unknown field(s)",
                ),
                ({"member": []}, "unknown field(s) 'member'"),
            ]
            for body, message in bad:
                answer = await beat(http, sup, body)
                assert answer.status_code == 400, (body, answer.text)
                assert answer.json()["error"].startswith(message), (message, answer.text)
            twice = await beat(http, sup, {"members": [{"path": "/cmu/a", "state": "alive"}] * 2})
            assert twice.status_code == 409, twice.text
            assert twice.json()["error"].startswith("members[1].path /cmu/a is already reported")
            untyped = await http.post(
                f"/api/v1/registrations/{sup}/heartbeat", content=b'{"members": []}'
            )
            assert untyped.status_code == 415, untyped.text
            assert (await members(http))["cmu"] == []  # nothing of the refused reports stayed


async def test_a_report_goes_with_its_registration(databases: Databases) -> None:
    with trio.fail_after(60):
        async with registry_http(databases.new(), "--ttl", "1") as http:
            sup = await register(http, "cmu", "hub", supernode=True)
            assert (await beat(http, sup, report("cmu", "hub", "rbd"))).status_code == 200
            assert len((await members(http))["cmu"]) == 2
            # a takeover by another supernode drops the old one's report
            new = await register(http, "cmu", "hub2", supernode=True, takeover=True)
            assert (await members(http))["cmu"] == []
            assert (await beat(http, new, report("cmu", "hub2", "tom"))).status_code == 200
            assert len((await members(http))["cmu"]) == 2
            # unregistered: gone at once
            assert (await http.delete(f"/api/v1/registrations/{new}")).status_code == 200
            assert (await members(http))["cmu"] == []
            # expired (no heartbeat for a ttl): gone with it
            third = await register(http, "cmu", "hub3", supernode=True)
            assert (await beat(http, third, report("cmu", "hub3"))).status_code == 200

            async def expired() -> bool:
                view = (await http.get(FED)).json()
                return not [n for o in view["orchestras"] for n in o["nodes"]]

            await wait_for(expired, 10, "the registrations to expire")
            assert (await members(http))["cmu"] == []
