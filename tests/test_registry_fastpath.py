"""The raw-ASGI fast path answers exactly what the Starlette routes answer.

The same requests go to two registries on identical stores (same clock), one with the fast
path and one without; status, content type, length and body must match byte for byte once
the random registration tokens are masked. A list of chosen requests (those the fuzzing of a
live registry found among them), then hypothesis' (hostile legacy queries from
tests/registry_fuzzing.py, JSON bodies of any shape, heartbeats).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings, strategies as st
from starlette.applications import Starlette

from registry_bridge import RegistryStore, create_app
from tests.registries import Databases
from tests.registry_fuzzing import LEGACY_REQUESTS

T0 = 1_800_000_000.0
TOKEN = re.compile(rb'"token":"[A-Za-z0-9_-]+"')

JSON = {"content-type": "application/json"}
TEXT = {"content-type": "text/plain"}

# (method, url, body[, headers]): register, heartbeat, legacy register, and their errors;
# a body goes with Content-Type: application/json unless headers are given
REQUESTS: list[tuple[str, str, bytes | None] | tuple[str, str, bytes | None, dict[str, str]]] = [
    ("POST", "/api/v1/federations/sleo/registrations", b'{"orchestra":"o","name":"a"}'),
    (
        "POST",
        "/api/v1/federations/sleo/registrations",
        b'{"orchestra":"o","name":"a","create":true,"supernode":true,"conductor":true}',
    ),
    (
        "POST",
        "/api/v1/federations/sleo/registrations",
        b'{"orchestra":"o","name":"b","port":9000,"host":"10.0.0.7","node_id":"x"}',
    ),
    ("POST", "/api/v1/federations/sleo/registrations", b'{"orchestra":"o","name":"b"}'),
    ("POST", "/api/v1/federations/sleo/registrations", b""),
    ("POST", "/api/v1/federations/sleo/registrations", b"{not json"),
    ("POST", "/api/v1/federations/sleo/registrations", b"\xff\xfe\x00"),
    ("POST", "/api/v1/federations/sleo/registrations", b"[1, 2]"),
    ("POST", "/api/v1/federations/sleo/registrations", b'{"orchestra":"o","name":"c","x":1}'),
    ("POST", "/api/v1/federations/sleo/registrations", b'{"orchestra":"o","name":"c","port":0}'),
    ("POST", "/api/v1/federations/sleo/registrations", b'{"orchestra":"o","name":"bad name"}'),
    ("POST", "/api/v1/federations/sleo/registrations", b'{"orchestra":"nope","name":"c"}'),
    ("POST", "/api/v1/federations/nope/registrations", b'{"orchestra":"o","name":"c"}'),
    ("POST", "/api/v1/federations/sleo/registrations", b'{"name":"c"}'),
    ("POST", "/api/v1/federations/sleo/registrations", b'{"name":"' + b"x" * 70_000 + b'"}'),
    ("POST", "/api/v1/federations/sleo/registrations/", b'{"orchestra":"o","name":"c"}'),
    ("POST", "/api/v1/federations/sleo/registrations", b'{"orchestra":"o","name":"c"}', {}),
    ("POST", "/api/v1/federations/sleo/registrations", b'{"orchestra":"o","name":"c"}', TEXT),
    (
        "POST",
        "/api/v1/federations/sleo/registrations",
        b'{"orchestra":"o","name":"c"}',
        {"content-type": "Application/JSON; charset=utf-8"},
    ),
    ("POST", "/api/v1/federations/sleo/registrations", b"x" * 70_000, TEXT),
    (
        "POST",
        "/api/v1/federations/sleo/registrations",
        b'{"orchestra":"o","name":"d","host":"fe80::1%x\\nConductor:"}',
    ),
    ("POST", "/api/v1/federations/sleo/registrations", b'{"orchestra":"o","name":"d","host":"h"}'),
    ("POST", "/api/v1/federations/sleo/registrations", b'{"orchestra":"o","name":".."}'),
    (
        "POST",
        "/api/v1/federations/sleo/registrations",
        b'{"orchestra":"o","name":"a","supernode":true,"node_id":"y"}',
    ),
    ("GET", "/api/v1/federations/sleo/registrations", None),
    ("POST", "/api/v1/registrations/unknowntoken/heartbeat", None),
    ("POST", "/api/v1/registrations/bad$token/heartbeat", None),
    ("POST", "/api/v1/registrations//heartbeat", None),
    ("GET", "/api/v1/registrations/abc/heartbeat", None),
    ("GET", "/register?federation=sleo&orchestra=o&name=l1&supernode=no&conductor=no", None),
    ("GET", "/register?federation=sleo&orchestra=o&name=l2&conductor=yes", None),
    ("GET", "/register?federation=sleo&orchestra=o&name=l3&port=70000", None),
    ("GET", "/register?federation=sleo&orchestra=o&name=l3&supernode=maybe", None),
    ("GET", "/register?federation=sleo&orchestra=o", None),
    ("GET", "/register?federation=none&orchestra=o&name=l4", None),
    ("GET", "/register?federation=sleo&orchestra=o&name=l5&name=l6&port=7000", None),
    ("GET", "/register?federation=sleo&orchestra=o&name=%C3%A9", None),
    ("GET", "/register?federation=sleo&orchestra=o&name=l8&port=%C2%B2", None),
    ("GET", "/register?federation=sleo&orchestra=o&name=l8&port=" + "9" * 5000, None),
    ("GET", "/register?federation=sleo&orchestra=o&name=l8&supernode=yes", None),
    ("GET", "/register?federation=sleo&orchestra=o&name=l8&supernode=yes&conductor=yes", None),
    ("GET", "/register?federation=sleo&orchestra=o&name=b", None),
    ("GET", "/register?federation=sleo&orchestra=o&name=..", None),
    ("HEAD", "/register?federation=sleo&orchestra=o&name=l7", None),
    # found by fuzzing (tests/test_registry_fuzz_live.py)
    ("POST", "/api/v1/federations/sleo/registrations", b'{"orchestra":"o","name":"f1","port":9.0}'),
    (
        "POST",
        "/api/v1/federations/sleo/registrations",
        b'{"orchestra":"o","name":"f2","port":null,"host":null,"node_id":null}',
    ),
    (
        "POST",
        "/api/v1/federations/sleo/registrations",
        b'{"orchestra":"o","name":"f3","node_id":"x\\nConductor:\\nsleo o /o/e 6.6.6.6 1"}',
    ),
    (
        "POST",
        "/api/v1/federations/sleo/registrations",
        b'{"\\u0013\\r":1,"' + b"k" * 9000 + b'":2}',
    ),
    (
        "POST",
        "/api/v1/federations/sleo/registrations",
        b'{"orchestra":"o","name":"f4","port":1e400}',
    ),
    ("GET", "/register?federation=sleo&orchestra=o&name=l9&supernode=" + "x" * 9000, None),
    ("GET", "/register?federation=sleo;orchestra=o&name=l9", None),
    ("GET", "/register?federation=sleo&orchestra=o&name=%&port=%zz", None),
    ("GET", "/register?federation=sleo&orchestra=o&name=l9&name", None),
    ("PUT", "/register?federation=sleo&orchestra=o&name=l9", None),
    ("POST", "/register", b"{}"),
    ("PUT", "/api/v1/federations/sleo/registrations", b"{}"),
    ("DELETE", "/api/v1/registrations/abc/heartbeat", None),
]


@pytest.fixture
async def clients(
    databases: Databases,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    stores = [RegistryStore(databases.new(), clock=lambda: T0) for _ in range(2)]
    apps = [create_app(stores[0], "pw"), create_app(stores[1], "pw", fast_path=False)]
    transports = [httpx.ASGITransport(app=app, client=("10.1.2.3", 4000)) for app in apps]
    async with (
        httpx.AsyncClient(transport=transports[0], base_url="http://r") as fast,
        httpx.AsyncClient(transport=transports[1], base_url="http://r") as slow,
    ):
        yield fast, slow
    for s in stores:
        s.close()


async def test_fast_path_answers_like_the_routes(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    fast, slow = clients
    tokens: list[str] = []
    for method, url, body, *extra in REQUESTS:
        headers = extra[0] if extra else JSON if body is not None else {}
        answers = [
            await c.request(method, url, content=body, headers=headers) for c in (fast, slow)
        ]
        a, b = answers
        where = f"{method} {url}"
        assert a.status_code == b.status_code, where
        assert a.headers.get("content-type") == b.headers.get("content-type"), where
        assert a.headers.get("content-length") == b.headers.get("content-length"), where
        assert a.headers.get("allow") == b.headers.get("allow"), where
        assert TOKEN.sub(b"T", a.content) == TOKEN.sub(b"T", b.content), where
        if a.status_code == 201:
            tokens.append(a.json()["token"])
            tokens.append(b.json()["token"])
    # heartbeats with real tokens: each registry knows its own
    for i in range(0, len(tokens), 2):
        url = "/api/v1/registrations/{}/heartbeat"
        a = await fast.post(url.format(tokens[i]))
        b = await slow.post(url.format(tokens[i + 1]))
        assert a.status_code == b.status_code and a.content == b.content
    assert tokens, "some registrations succeeded"


async def test_fast_path_limits_registrations_like_the_routes(databases: Databases) -> None:
    stores = [RegistryStore(databases.new(), clock=lambda: T0) for _ in range(2)]
    apps = [
        create_app(stores[0], register_burst=3, register_rate=0.001),
        create_app(stores[1], register_burst=3, register_rate=0.001, fast_path=False),
    ]
    for app in apps:
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as http:
            url = "/register?federation=f&orchestra=o&name=n"
            body = {"orchestra": "o", "name": "j", "create": True}
            first = await http.post("/api/v1/federations/f/registrations", json=body)
            assert first.status_code == 201
            assert (await http.get(url)).status_code == 200
            assert (await http.get(url)).status_code == 200
            for _ in range(2):
                late = await http.post("/api/v1/federations/f/registrations", json=body)
                assert late.status_code == 429 and late.headers["retry-after"] == "1000"
                assert late.json()["error"].startswith("too many registrations from 10.1.2.3")
                legacy = await http.get(url)
                assert legacy.status_code == 429 and legacy.text.startswith("Error: too many")
            # heartbeats are not registrations
            token = first.json()["token"]
            assert (await http.post(f"/api/v1/registrations/{token}/heartbeat")).is_success
        transport = httpx.ASGITransport(app=app, client=("10.9.9.9", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as http:
            assert (await http.get(url.replace("name=n", "name=m"))).status_code == 200
    for s in stores:
        s.close()


FIELDS = ["orchestra", "name", "host", "port", "node_id", "supernode", "conductor", "create"]
VALUE = st.one_of(
    st.sampled_from(["o", "a", "b", "sleo", "10.0.0.7", "::1", "", "..", "x\ny"]),
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
BODY = st.one_of(
    st.dictionaries(st.sampled_from([*FIELDS, "takeover", "x"]), VALUE, max_size=7).map(
        lambda d: json.dumps(d).encode()
    ),
    st.binary(max_size=40),
)
# (kind, data): a JSON register body, a legacy register query, a heartbeat of the n-th token
OPS = st.one_of(
    st.tuples(st.just("register"), BODY),
    st.tuples(
        st.just("legacy"),
        LEGACY_REQUESTS.filter(lambda r: r.path == "/register").map(lambda r: r.target),
    ),
    st.tuples(st.just("heartbeat"), st.integers(0, 5)),
)


@pytest.fixture(scope="module")
def twins(
    module_databases: Databases,
) -> Iterator[tuple[Starlette, Starlette, list[list[str]]]]:
    """A registry with the fast path and one without, on stores that see the same requests
    (same clock), and the tokens each handed out."""
    stores = [RegistryStore(module_databases.new(), clock=lambda: T0) for _ in range(2)]
    for s in stores:
        s.federation_id("sleo", create=True)
        s.orchestra_id("sleo", "o", create=True)
    yield create_app(stores[0]), create_app(stores[1], fast_path=False), [[], []]
    for s in stores:
        s.close()


async def _both(
    apps: tuple[Starlette, Starlette], tokens: list[list[str]], ops: list[tuple[str, Any]]
) -> None:
    for kind, data in ops:
        answers = []
        for i, app in enumerate(apps):
            transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4000))
            async with httpx.AsyncClient(transport=transport, base_url="http://r") as http:
                if kind == "register":
                    url = "/api/v1/federations/sleo/registrations"
                    answers.append(await http.post(url, content=data, headers=JSON))
                elif kind == "legacy":
                    target = httpx.URL("http://r").copy_with(raw_path=data.encode())
                    answers.append(await http.get(target))
                else:
                    token = tokens[i][data] if data < len(tokens[i]) else "no-such-token"
                    answers.append(await http.post(f"/api/v1/registrations/{token}/heartbeat"))
        a, b = answers
        where = f"{kind} {data!r:.200}"
        assert a.status_code == b.status_code, where
        assert a.headers.get("content-type") == b.headers.get("content-type"), where
        assert TOKEN.sub(b"T", a.content) == TOKEN.sub(b"T", b.content), where
        if kind == "register" and a.status_code == 201:
            for i, answer in enumerate(answers):
                tokens[i].append(answer.json()["token"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(ops=st.lists(OPS, min_size=1, max_size=6))
def test_fast_path_answers_like_the_routes_to_fuzzed_requests(
    twins: tuple[Starlette, Starlette, list[list[str]]], ops: list[tuple[str, Any]]
) -> None:
    fast, slow, tokens = twins
    trio.run(_both, (fast, slow), tokens, ops)
