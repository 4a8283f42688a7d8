"""The JSON API, the HTML admin actions and RegistryClient, against the real app.

Most tests drive the app in-process through ``httpx.ASGITransport`` (a real database: every
test runs on SQLite and on PostgreSQL); the client tests run over a real hypercorn socket on
127.0.0.1.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
from starlette.routing import Route

from registry_bridge import (
    ConductorConflict,
    RegistryClient,
    RegistryNotFound,
    RegistryRejected,
    RegistryStore,
    RegistryUnreachable,
    create_app,
    serve_registry,
)
from tests.registries import Databases

PASSWORD = "s3cret"
JSON_TYPE = {"content-type": "application/json"}


def basic(password: str, user: str = "admin") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
async def store(databases: Databases) -> AsyncIterator[RegistryStore]:
    s = RegistryStore(databases.new(), ttl=30.0)
    yield s
    s.close()


@pytest.fixture
async def api(store: RegistryStore) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(store, PASSWORD)
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        yield client


@pytest.fixture
async def open_api(store: RegistryStore) -> AsyncIterator[httpx.AsyncClient]:
    """The app with no admin password configured."""
    transport = httpx.ASGITransport(app=create_app(store, None))
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        yield client


async def setup_sleo(api: httpx.AsyncClient) -> None:
    assert (await api.post("/api/v1/federations", json={"name": "sleo"})).status_code == 201
    for orch in ("cmu", "colorado"):
        r = await api.post("/api/v1/federations/sleo/orchestras", json={"name": orch})
        assert r.status_code == 201


async def register(api: httpx.AsyncClient, orch: str, name: str, **kw: Any) -> httpx.Response:
    return await api.post(
        "/api/v1/federations/sleo/registrations", json={"orchestra": orch, "name": name, **kw}
    )


async def test_openapi_describes_every_api_route(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/api/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    app = api._transport.app  # type: ignore[attr-defined]
    for route in app.routes:
        assert isinstance(route, Route)
        if route.path.startswith("/api/v1"):
            assert route.path in doc["paths"], route.path
            for method in route.methods or ():
                if method != "HEAD":
                    assert method.lower() in doc["paths"][route.path], (route.path, method)


async def test_federation_create_list_show_and_errors(api: httpx.AsyncClient) -> None:
    created = await api.post("/api/v1/federations", json={"name": "sleo"})
    assert created.status_code == 201 and created.json()["name"] == "sleo"
    dup = await api.post("/api/v1/federations", json={"name": "sleo"})
    assert dup.status_code == 409 and "already exists" in dup.json()["error"]
    bad = await api.post("/api/v1/federations", json={"name": "no spaces"})
    assert bad.status_code == 400 and "letters" in bad.json()["error"]
    assert (await api.post("/api/v1/federations", json={"name": "x" * 65})).status_code == 400
    assert (await api.post("/api/v1/federations", json={})).status_code == 400
    assert (await api.post("/api/v1/federations", json=[1])).status_code == 400
    junk = await api.post("/api/v1/federations", content=b"{nope", headers=JSON_TYPE)
    assert junk.status_code == 400 and junk.json()["error"] == "the body is not valid JSON"
    extra = await api.post("/api/v1/federations", json={"name": "a", "zzz": 1})
    assert extra.status_code == 400 and "zzz" in extra.json()["error"]
    listed = (await api.get("/api/v1/federations")).json()["federations"]
    assert [f["name"] for f in listed] == ["sleo"]
    shown = await api.get("/api/v1/federations/sleo")
    assert shown.status_code == 200 and shown.json()["orchestras"] == []
    missing = await api.get("/api/v1/federations/nope")
    assert missing.status_code == 404 and missing.json() == {"error": "no federation 'nope'"}


async def test_body_size_limited(api: httpx.AsyncClient) -> None:
    big = b'{"name": "' + b"a" * 70_000 + b'"}'
    r = await api.post("/api/v1/federations", content=big, headers=JSON_TYPE)
    assert r.status_code == 413 and "larger than" in r.json()["error"]


async def test_orchestras_create_and_list(api: httpx.AsyncClient) -> None:
    await setup_sleo(api)
    dup = await api.post("/api/v1/federations/sleo/orchestras", json={"name": "cmu"})
    assert dup.status_code == 409
    nofed = await api.post("/api/v1/federations/nope/orchestras", json={"name": "cmu"})
    assert nofed.status_code == 404
    listed = (await api.get("/api/v1/federations/sleo/orchestras")).json()["orchestras"]
    assert [o["name"] for o in listed] == ["cmu", "colorado"]
    assert (await api.get("/api/v1/federations/nope/orchestras")).status_code == 404


async def test_registration_answers_supernodes_conductor_and_time(api: httpx.AsyncClient) -> None:
    await setup_sleo(api)
    a = await register(api, "cmu", "alice", supernode=True, conductor=True, port=9000)
    assert a.status_code == 201
    ja = a.json()
    assert ja["supernode_granted"] and ja["conductor_granted"] and ja["conductor_term"] == 1
    assert ja["conductor"]["host"] == "10.1.2.3" and ja["conductor"]["port"] == 9000
    z = (await register(api, "colorado", "zed", supernode=True, host="192.0.2.7")).json()
    assert [e["path"] for e in z["other_supernodes"]] == ["/cmu/alice"]
    r = (await register(api, "cmu", "rbd", conductor=True)).json()
    assert r["supernode"]["path"] == "/cmu/alice" and r["supernode"]["host"] == "10.1.2.3"
    assert r["conductor_granted"] is False and r["conductor"]["path"] == "/cmu/alice"
    assert r["elapsed"] >= 0 and r["ttl"] == 30.0 and len(r["token"]) >= 16
    view = (await api.get("/api/v1/federations/sleo")).json()
    assert view["registrations"] == 3
    assert "token" not in str(view)


async def test_registration_errors(api: httpx.AsyncClient) -> None:
    await setup_sleo(api)
    cases = [
        ({"orchestra": "cmu"}, 400, "missing field 'name'"),
        ({"orchestra": "nope", "name": "a"}, 404, "no orchestra 'nope'"),
        ({"orchestra": "cmu", "name": "a", "port": 0}, 400, "port"),
        ({"orchestra": "cmu", "name": "a", "port": "80"}, 400, "port"),
        ({"orchestra": "cmu", "name": "a", "supernode": "yes"}, 400, "true or false"),
        ({"orchestra": "cmu", "name": "a", "host": "bad host!"}, 400, "host"),
        ({"orchestra": "cmu", "name": "a/b"}, 400, "letters"),
    ]
    for body, status, text in cases:
        r = await api.post("/api/v1/federations/sleo/registrations", json=body)
        assert r.status_code == status, body
        assert text in r.json()["error"], (body, r.json())
    nofed = await api.post(
        "/api/v1/federations/nope/registrations", json={"orchestra": "o", "name": "n"}
    )
    assert nofed.status_code == 404
    created = await api.post(
        "/api/v1/federations/newfed/registrations",
        json={"orchestra": "o", "name": "n", "create": True},
    )
    assert created.status_code == 201
    held = await register(api, "cmu", "a", node_id="one")
    assert held.status_code == 201
    other = await register(api, "cmu", "a", node_id="two")
    assert other.status_code == 409 and "already registered by node one" in other.json()["error"]


async def test_heartbeat_and_unregister_by_token(api: httpx.AsyncClient) -> None:
    await setup_sleo(api)
    token = (await register(api, "cmu", "a")).json()["token"]
    hb = await api.post(f"/api/v1/registrations/{token}/heartbeat")
    assert hb.status_code == 200 and set(hb.json()) >= {"elapsed", "ttl", "version"}
    gone = await api.delete(f"/api/v1/registrations/{token}")
    assert gone.status_code == 200
    assert (await api.post(f"/api/v1/registrations/{token}/heartbeat")).status_code == 404
    assert (await api.delete(f"/api/v1/registrations/{token}")).status_code == 404
    assert (await api.post("/api/v1/registrations/%2e%2e/heartbeat")).status_code == 404


async def test_conductor_compare_and_set(api: httpx.AsyncClient) -> None:
    await setup_sleo(api)
    url = "/api/v1/federations/sleo/conductor"
    a = (await register(api, "cmu", "a", node_id="n-a", host="10.0.0.9")).json()["token"]
    z = (await register(api, "colorado", "z")).json()["token"]
    assert (await api.get(url)).json()["term"] == 0
    ok = await api.post(url, json={"token": a, "expected_term": 0, "holder": "/cmu/a"})
    assert ok.status_code == 200 and ok.json()["term"] == 1 and ok.json()["holder"] == "/cmu/a"
    assert ok.json()["host"] == "10.0.0.9" and ok.json()["node_id"] == "n-a"
    stale = await api.post(url, json={"token": z, "expected_term": 0, "holder": "/colorado/z"})
    assert stale.status_code == 409
    assert stale.json()["current"]["holder"] == "/cmu/a" and "term is 1" in stale.json()["error"]
    handed = await api.post(url, json={"token": a, "expected_term": 1, "holder": "/colorado/z"})
    assert handed.status_code == 200 and handed.json()["holder"] == "/colorado/z"
    release = await api.post(url, json={"token": z, "expected_term": 2, "holder": None})
    assert release.json() == {
        "holder": None,
        "node_id": None,
        "host": None,
        "port": None,
        "term": 3,
    }
    assert (await api.post(url, json={"token": a, "expected_term": 3})).status_code == 400
    bad_term = {"token": a, "expected_term": True, "holder": None}
    assert (await api.post(url, json=bad_term)).status_code == 400
    bad_path = {"token": a, "expected_term": 3, "holder": "x"}
    assert (await api.post(url, json=bad_path)).status_code == 400
    nobody = await api.post(url, json={"token": a, "expected_term": 3, "holder": "/cmu/nobody"})
    assert nobody.status_code == 403  # a claims only for itself
    bad_token = await api.post(url, json={"token": "a b", "expected_term": 3, "holder": None})
    assert bad_token.status_code == 404
    nofed = "/api/v1/federations/nope/conductor"
    gone = await api.post(nofed, json={"token": a, "expected_term": 0, "holder": None})
    assert gone.status_code == 404
    assert (await api.get(nofed)).status_code == 404


async def test_elapsed_has_receive_and_send_stamps(api: httpx.AsyncClient) -> None:
    await setup_sleo(api)
    first = (await api.get("/api/v1/federations/sleo/elapsed")).json()
    assert first["epoch"] is None and first["elapsed"] == 0.0
    await register(api, "cmu", "a")
    e = (await api.get("/api/v1/federations/sleo/elapsed")).json()
    assert e["epoch"] is not None and 0 <= e["t2"] <= e["t3"] == e["elapsed"] < 60
    assert (await api.get("/api/v1/federations/nope/elapsed")).status_code == 404


async def test_unknown_route_and_method_are_json_errors(api: httpx.AsyncClient) -> None:
    r = await api.get("/api/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    m = await api.put("/api/v1/federations")
    assert m.status_code == 405 and m.headers["content-type"] == "application/json"


async def test_json_admin_actions_need_the_password(api: httpx.AsyncClient) -> None:
    await setup_sleo(api)
    url = "/api/v1/federations/sleo"
    none = await api.delete(url)
    assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Basic")
    wrong = await api.delete(url, headers=basic("guess"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "wrong admin password"
    assert (await api.post(f"{url}/reset", json={})).status_code == 401
    form = await api.post(f"{url}/reset", content=b"x", headers=basic(PASSWORD))
    assert form.status_code == 415
    await register(api, "cmu", "a", conductor=True)
    reset = await api.post(f"{url}/reset", json={}, headers=basic(PASSWORD))
    assert reset.status_code == 200 and reset.json()["registrations"] == 0
    assert (await api.delete(url, headers=basic(PASSWORD))).status_code == 200
    assert (await api.get(url)).status_code == 404


async def test_admin_actions_refused_without_configured_password(
    open_api: httpx.AsyncClient,
) -> None:
    await setup_sleo(open_api)
    j = await open_api.delete("/api/v1/federations/sleo", headers=basic(""))
    assert j.status_code == 403 and "STAGEMESH_ADMIN_PASSWORD" in j.json()["error"]
    page = await open_api.get("/federations/sleo/admin")
    assert page.status_code == 403 and "--admin-password-file" in page.text
    h = await open_api.post("/federations/sleo/delete", data={"csrf": "x"})
    assert h.status_code == 403
    assert "--admin-password-file" in h.text and "STAGEMESH_ADMIN_PASSWORD" in h.text
    assert (await open_api.get("/api/v1/federations/sleo")).status_code == 200


FORMS = re.compile(r'action="/federations/sleo/(\w+)">\s*<input[^>]*value="(\w+)"')


async def test_html_admin_needs_login_and_csrf(api: httpx.AsyncClient) -> None:
    await setup_sleo(api)
    await register(api, "cmu", "alice", supernode=True, conductor=True)
    page = await api.get("/federations/sleo")
    assert page.status_code == 200 and "/cmu/alice" in page.text and "<svg" in page.text
    assert 'name="csrf"' not in page.text and 'href="/federations/sleo/admin"' in page.text
    assert (await api.get("/federations/sleo/admin")).status_code == 401
    assert (await api.get("/federations/sleo/admin", headers=basic("nope"))).status_code == 401
    admin = await api.get("/federations/sleo/admin", headers=basic(PASSWORD))
    assert admin.status_code == 200 and admin.headers["cache-control"] == "no-store"
    session = admin.cookies["stagemesh_admin"]
    tokens = dict(FORMS.findall(admin.text))
    assert set(tokens) == {"delete", "reset"}
    again = await api.get("/federations/sleo/admin", headers=basic(PASSWORD))
    assert "set-cookie" not in again.headers  # the session goes on: the same tokens
    assert dict(FORMS.findall(again.text)) == tokens
    url = "/federations/sleo/delete"
    nologin = await api.post(url, data={"csrf": tokens["delete"]})
    assert nologin.status_code == 401 and "Basic" in nologin.headers["www-authenticate"]
    wrong = await api.post(url, data={"csrf": tokens["delete"]}, headers=basic("nope"))
    assert wrong.status_code == 401
    nocsrf = await api.post(url, headers=basic(PASSWORD))
    assert nocsrf.status_code == 403 and "CSRF" in nocsrf.text
    othercsrf = await api.post(url, data={"csrf": tokens["reset"]}, headers=basic(PASSWORD))
    assert othercsrf.status_code == 403
    api.cookies.clear()
    nocookie = await api.post(url, data={"csrf": tokens["delete"]}, headers=basic(PASSWORD))
    assert nocookie.status_code == 403
    api.cookies.set("stagemesh_admin", session)
    reset = await api.post(
        "/federations/sleo/reset", data={"csrf": tokens["reset"]}, headers=basic(PASSWORD)
    )
    assert reset.status_code == 303
    assert (await api.get("/api/v1/federations/sleo")).json()["registrations"] == 0
    done = await api.post(url, data={"csrf": tokens["delete"]}, headers=basic(PASSWORD))
    assert done.status_code == 303 and done.headers["location"] == "/"
    assert (await api.get("/federations/sleo")).status_code == 404


async def test_index_page_lists_federations(api: httpx.AsyncClient) -> None:
    await setup_sleo(api)
    page = await api.get("/")
    assert page.status_code == 200 and 'href="/federations/sleo"' in page.text


@pytest.fixture
async def served(store: RegistryStore) -> AsyncIterator[str]:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            lambda task_status: serve_registry(
                create_app(store, PASSWORD),
                "127.0.0.1:0",
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        yield url
        stop.set()


async def test_client_over_real_socket(served: str) -> None:
    with trio.fail_after(20):
        async with RegistryClient(served) as client:
            a = await client.register("sleo", "cmu", "a", supernode=True, conductor=True)
            assert a.supernode_granted and a.conductor_granted and a.conductor_term == 1
            b = await client.register("sleo", "colorado", "b", supernode=True, node_id="nb")
            assert [p.path for p in b.other_supernodes] == ["/cmu/a"]
            assert b.other_supernodes[0].host == "127.0.0.1"
            hb = await client.heartbeat(b.token)
            assert hb.ttl == 30.0 and hb.conductor_term == 1
            state = await client.conductor("sleo")
            assert state.holder == "/cmu/a" and state.term == 1
            with pytest.raises(ConductorConflict) as info:
                await client.set_conductor(
                    "sleo", token=b.token, expected_term=0, holder="/colorado/b"
                )
            assert info.value.current.term == 1
            with pytest.raises(RegistryRejected) as refused:
                await client.set_conductor(
                    "sleo", token=b.token, expected_term=1, holder="/colorado/b"
                )
            assert refused.value.status == 403 and "/cmu/a" in refused.value.message
            moved = await client.set_conductor(
                "sleo", token=a.token, expected_term=1, holder="/colorado/b"
            )
            assert moved.holder == "/colorado/b" and moved.host == "127.0.0.1"
            sample = await client.elapsed("sleo")
            assert sample.t2 <= sample.t3 and sample.round_trip >= 0
            assert sample.epoch is not None
            await client.unregister(a.token)
            with pytest.raises(RegistryNotFound):
                await client.heartbeat(a.token)
            view = await client.federation("sleo")
            assert view["registrations"] == 1


async def test_client_reports_unreachable_registry() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    with trio.fail_after(10):
        async with RegistryClient(f"http://127.0.0.1:{port}", timeout=2) as client:
            with pytest.raises(RegistryUnreachable):
                await client.elapsed("sleo")


async def test_registrations_expire_when_heartbeats_stop(databases: Databases) -> None:
    store = RegistryStore(databases.new(), ttl=0.4)
    transport = httpx.ASGITransport(app=create_app(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as api:
        keep = (
            await api.post(
                "/api/v1/federations/f/registrations",
                json={"orchestra": "o", "name": "keep", "create": True, "conductor": True},
            )
        ).json()["token"]
        await api.post(
            "/api/v1/federations/f/registrations",
            json={"orchestra": "o", "name": "quiet", "supernode": True},
        )
        with trio.fail_after(10):
            while True:
                assert (
                    await api.post(f"/api/v1/registrations/{keep}/heartbeat")
                ).status_code == 200
                view = (await api.get("/api/v1/federations/f")).json()
                paths = [n["path"] for n in view["orchestras"][0]["nodes"]]
                if paths == ["/o/keep"]:
                    break
                await trio.sleep(0.05)
        assert view["orchestras"][0]["supernode"] is None
        assert view["conductor"]["holder"] == "/o/keep"
    store.close()


async def test_odd_csrf_values_are_refused_not_crashing(api: httpx.AsyncClient) -> None:
    await setup_sleo(api)
    await api.get("/federations/sleo/admin", headers=basic(PASSWORD))  # a session cookie
    assert api.cookies.get("stagemesh_admin")
    for raw in [b"csrf=%ff%fe", b"csrf=%E2%82%AC", b"csrf=\xff", b"csrf&csrf=", b"%%%"]:
        r = await api.post("/federations/sleo/reset", content=raw, headers=basic(PASSWORD))
        assert r.status_code == 403, raw
    api.cookies.clear()
    for cookie in [b"", b"x", b"\xc3\xa9" * 43, b"a" * 4000, b"\xff" * 43, b'"' * 43]:
        headers = {**basic(PASSWORD), "cookie": b"stagemesh_admin=" + cookie}
        r = await api.post("/federations/sleo/reset", data={"csrf": "0"}, headers=headers)
        assert r.status_code == 403, cookie[:5]
