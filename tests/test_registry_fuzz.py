"""Hypothesis sends arbitrary requests to the app: never a 500, and the state stays sound."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio
from hypothesis import given, settings, strategies as st

from registry_bridge import Conflict, RegistryStore, create_app
from tests.registries import Databases

NAMES = st.sampled_from(["sleo", "cmu", "colorado", "a", "bad name", "x" * 70, "%2F", "..", ""])
SEGMENT = st.one_of(NAMES, st.text(max_size=12).map(lambda t: quote(t, safe="")))
PATHS = st.one_of(
    st.builds(
        lambda parts: "/" + "/".join(parts),
        st.lists(SEGMENT, max_size=5),
    ).filter(lambda p: not p.startswith("//")),  # httpx refuses such a URL before sending
    st.builds(
        lambda tpl, a, b: tpl.format(a=a, b=b),
        st.sampled_from(
            [
                "/api/v1/federations",
                "/api/v1/federations/{a}",
                "/api/v1/federations/{a}/reset",
                "/api/v1/federations/{a}/orchestras",
                "/api/v1/federations/{a}/registrations",
                "/api/v1/federations/{a}/conductor",
                "/api/v1/federations/{a}/elapsed",
                "/api/v1/registrations/{b}/heartbeat",
                "/api/v1/registrations/{b}",
                "/federation",
                "/orchestra",
                "/register",
                "/unregister",
                "/federations/{a}",
                "/federations/{a}/{b}",
                "/",
            ]
        ),
        NAMES,
        SEGMENT,
    ),
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | NAMES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "name",
        "orchestra",
        "port",
        "host",
        "supernode",
        "conductor",
        "create",
        "takeover",
        "node_id",
        "expected_term",
        "holder",
        "csrf",
        "token",
    ]
)
BODIES = st.one_of(
    st.dictionaries(FIELDS, JSON, max_size=6).map(lambda d: json.dumps(d).encode()),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
)
PARAMS = st.dictionaries(
    st.sampled_from(
        ["federation", "orchestra", "name", "create", "supernode", "conductor", "port"]
    ),
    st.one_of(NAMES, st.sampled_from(["yes", "no", "maybe", "0", "70000"]), st.text(max_size=8)),
    max_size=6,
)
METHODS = st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH"])
HEADERS = st.sampled_from(
    [
        {},
        {"content-type": "application/json"},
        {"authorization": "Basic YWRtaW46cHc="},
        {"authorization": "Basic !!!"},
        {"authorization": "Bearer x"},
        {"content-type": "application/json", "authorization": "Basic YWRtaW46cHc="},
        {"cookie": "stagemesh_admin=" + "a" * 43, "authorization": "Basic YWRtaW46cHc="},
        {"content-type": "text/plain; charset=utf-8"},
    ]
)


@pytest.fixture(scope="module")
def store(module_databases: Databases) -> Iterator[RegistryStore]:
    s = RegistryStore(module_databases.new())
    s.federation_id("sleo", create=True)
    s.orchestra_id("sleo", "cmu", create=True)
    yield s
    s.close()


FEDERATIONS = itertools.count(1)


async def send(
    store: RegistryStore,
    method: str,
    path: str,
    params: dict[str, str],
    body: bytes,
    headers: dict[str, str],
) -> httpx.Response:
    app = create_app(store, "pw")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        with trio.fail_after(10):
            return await client.request(
                method,
                path,
                params=params,
                content=body if method != "GET" else None,
                headers=headers,
            )


@settings(max_examples=250)
@given(method=METHODS, path=PATHS, params=PARAMS, body=BODIES, headers=HEADERS)
def test_arbitrary_requests_never_500(
    store: RegistryStore,
    method: str,
    path: str,
    params: dict[str, str],
    body: bytes,
    headers: dict[str, str],
) -> None:
    response = trio.run(send, store, method, path, params, body, headers)
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400 and response.url.path.startswith("/api/"):
        doc: Any = response.json()
        assert isinstance(doc, dict) and isinstance(doc["error"], str) and doc["error"]
    if response.status_code >= 400 and response.url.path in ("/federation", "/register"):
        assert response.text.startswith("Error: ")
    assert store.check_consistency() == []


@settings(max_examples=60)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["cmu", "colorado"]),
            st.sampled_from(["a", "b", "c", "d"]),
            st.booleans(),
            st.booleans(),
            st.booleans(),
            st.sampled_from([None, "n1", "n2", "legacy"]),
        ),
        max_size=12,
    )
)
def test_random_registrations_keep_one_supernode_and_one_conductor(
    store: RegistryStore,
    ops: list[tuple[str, str, bool, bool, bool, str | None]],
) -> None:
    s = store  # a fresh federation per example
    f = f"ops{next(FEDERATIONS)}"
    s.federation_id(f, create=True)
    for orch, name, sup, cond, takeover, owner in ops:
        try:
            s.register(
                f,
                orch,
                name,
                host="10.0.0.1",
                port=1,
                supernode=sup,
                conductor=cond,
                takeover=takeover,
                create=True,
                node_id=None if owner == "legacy" else owner,
                heartbeat=owner != "legacy",
            )
        except Conflict as exc:
            assert "registered" in exc.message  # the path is held by a registration with a token
        assert s.check_consistency() == []
    view = s.federation(f)
    for orch in view["orchestras"]:
        assert sum(n["supernode"] for n in orch["nodes"]) <= 1
    holders = [n["path"] for o in view["orchestras"] for n in o["nodes"] if n["conductor"]]
    assert holders == ([view["conductor"]["holder"]] if view["conductor"]["holder"] else [])
