"""Hypothesis sends arbitrary requests to the app: never a 500, and the state stays sound."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx
import pytest
import trio
from hypothesis import given, settings, strategies as st

from registry_bridge import Conflict, RegistryStore, create_app
from tests.registries import Databases
from tests.registry_fuzz_hooks import vague_error

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


@pytest.fixture
def sleo(store: RegistryStore) -> RegistryStore:
    """The module's store with federation ``sleo`` and its orchestra ``cmu`` there again: the
    fuzzer before may have deleted or reset them (it sends the admin password too)."""
    store.federation_id("sleo", create=True)
    store.orchestra_id("sleo", "cmu", create=True)
    return store


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


# What the fuzzing of a live registry found (tests/test_registry_fuzz_live.py), each answered
# now with a short message that names what is wrong: (method, url, JSON body, status, words)
FOUND: list[tuple[str, str, object, int, str]] = [
    ("POST", "/api/v1/federations", {"\x13\r" + "k" * 9000: 1}, 400, "unknown field(s) '\\x13"),
    ("POST", "/api/v1/federations/sleo/reset", {"a\nb": 1}, 401, "admin login required"),
    (
        "POST",
        "/api/v1/federations/sleo/conductor",
        {"token": "t", "expected_term": 0, "holder": "x" * 60_000},
        400,
        "holder must be a path /<orchestra>/<name> of at most 130",
    ),
    (
        "POST",
        "/api/v1/federations/sleo/registrations",
        {"orchestra": "cmu", "name": "n", "node_id": "x\nConductor:"},
        400,
        "node_id must be 1-128 characters without control",
    ),
    (
        "POST",
        "/api/v1/federations/sleo/registrations",
        {"orchestra": "cmu", "name": "n", "port": 1e400},
        400,
        "port must be an integer",
    ),
    ("PUT", "/api/v1/federations", None, 405, "allowed: GET, HEAD, POST"),
    ("PUT", "/api/v1/federations/" + "x" * 30_000, None, 405, "allowed: DELETE, GET, HEAD"),
    ("GET", "/api/v1/nothing/" + "y" * 30_000 + "%0A", None, 404, "no such resource: /api/v1/"),
    ("POST", "/register", None, 405, "allowed: GET"),
    (
        "GET",
        "/register?federation=sleo&orchestra=cmu&name=n&supernode=" + "x" * 9000,
        None,
        400,
        "supernode must be yes or no, not 'xxx",
    ),
]


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "words"),
    FOUND,
    ids=[f"{m}-{u.split('?')[0][:30]}-{s}" for m, u, _, s, _ in FOUND],
)
def test_what_the_live_fuzz_found_is_refused_in_one_short_line(
    sleo: RegistryStore, method: str, url: str, body: object, status: int, words: str
) -> None:
    content = json.dumps(body).encode() if body is not None else b""
    headers = {"content-type": "application/json"} if body is not None else {}
    path, _, query = url.partition("?")
    params = dict(parse_qsl(query))
    response = trio.run(send, sleo, method, path, params, content, headers)
    assert response.status_code == status, response.text[:300]
    message = response.json()["error"] if url.startswith("/api/") else response.text
    if not url.startswith("/api/"):
        assert message.startswith("Error: ") and message.endswith("\n")
        message = message[len("Error: ") : -1]
    assert words in message and vague_error(status, message) is None, message
    if status == 405:
        assert response.headers["allow"] == message.rsplit("allowed: ", 1)[1]


def test_integral_json_numbers_are_integers(sleo: RegistryStore) -> None:
    body = {"orchestra": "cmu", "name": "float-port", "port": 7471.0, "node_id": None}
    headers = {"content-type": "application/json"}
    url = "/api/v1/federations/sleo/registrations"
    response = trio.run(send, sleo, "POST", url, {}, json.dumps(body).encode(), headers)
    assert response.status_code == 201, response.text
    token = response.json()["token"]
    conductor = {
        "token": token,
        "expected_term": float(response.json()["conductor_term"]),
        "holder": "/cmu/float-port",
    }
    url = "/api/v1/federations/sleo/conductor"
    claimed = trio.run(send, sleo, "POST", url, {}, json.dumps(conductor).encode(), headers)
    assert claimed.status_code == 200 and claimed.json()["port"] == 7471, claimed.text
