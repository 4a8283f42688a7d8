"""Finding 13: the admin forms' CSRF secret is per login session, and failed logins are
slowed per address.

A real ``stagemesh registry`` process (on SQLite and on PostgreSQL) with an admin password,
over HTTP on loopback. The attacker is a web page the logged-in organiser visits: it can read
the registry's public pages and make the organiser's browser POST a form (with the cached
Basic credentials, but neither the registry's cookie, which is SameSite=Strict, nor anything
it cannot read).
"""

from __future__ import annotations

import base64
import re

import httpx
import trio

from tests.registries import Databases, running_registry

PASSWORD = "correct horse"
ENV = {"STAGEMESH_ADMIN_PASSWORD": PASSWORD}
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
FORM = re.compile(r'action="/federations/sleo/(\w+)">\s*<input[^>]*value="([^"]+)"')


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}


async def registrations(http: httpx.AsyncClient) -> int:
    count: int = (await http.get("/api/v1/federations/sleo")).json()["registrations"]
    return count


async def test_csrf_secret_is_per_login_and_not_on_public_pages(databases: Databases) -> None:
    with trio.fail_after(30):
        async with running_registry(databases.new(), env=ENV) as url:
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                r = await http.post(
                    "/api/v1/federations/sleo/registrations",
                    json={"orchestra": "cmu", "name": "alice", "create": True},
                )
                assert r.status_code == 201

            # the attacker's page reads every public page for a token ...
            async with httpx.AsyncClient(base_url=url, timeout=10) as attacker:
                public = [(await attacker.get(p)).text for p in ("/", "/federations/sleo")]
                found = [t for page in public for t in CSRF.findall(page)]
                assert found == [], "a CSRF token on a public page"
                # ... then makes the organiser's browser post the forms with her credentials
                for action in ("reset", "delete"):
                    for token in ("", "0" * 64, *found):
                        forged = await attacker.post(
                            f"/federations/sleo/{action}",
                            data={"csrf": token},
                            headers=basic(PASSWORD),
                        )
                        assert forged.status_code == 403, (action, forged.status_code)
                assert await registrations(attacker) == 1

            # the organiser logs in on the admin page: a session cookie and the form tokens
            async with httpx.AsyncClient(base_url=url, timeout=10) as organiser:
                page = await organiser.get("/federations/sleo/admin", headers=basic(PASSWORD))
                assert page.status_code == 200
                cookie = page.headers["set-cookie"]
                assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
                tokens = dict(FORM.findall(page.text))
                assert set(tokens) == {"reset", "delete"}

                # her token with another session's cookie, or with none, is refused
                for other_session in (True, False):
                    async with httpx.AsyncClient(base_url=url, timeout=10) as other:
                        if other_session:
                            await other.get("/federations/sleo/admin", headers=basic(PASSWORD))
                        stolen = await other.post(
                            "/federations/sleo/reset",
                            data={"csrf": tokens["reset"]},
                            headers=basic(PASSWORD),
                        )
                        assert stolen.status_code == 403 and "CSRF" in stolen.text
                assert await registrations(organiser) == 1

                reset = await organiser.post(
                    "/federations/sleo/reset",
                    data={"csrf": tokens["reset"]},
                    headers=basic(PASSWORD),
                )
                assert reset.status_code == 303
                assert await registrations(organiser) == 0


async def test_2000_wrong_passwords_are_not_all_answered_at_full_speed(
    databases: Databases,
) -> None:
    with trio.fail_after(60):
        async with running_registry(databases.new(), env=ENV) as url:
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                await http.post("/api/v1/federations", json={"name": "sleo"})
                statuses: list[int] = []
                retry_after: list[int] = []
                guesses = iter(range(2000))

                async def guesser() -> None:
                    for i in guesses:
                        r = await http.delete("/api/v1/federations/sleo", headers=basic(f"g{i}"))
                        statuses.append(r.status_code)
                        if r.status_code == 429:
                            retry_after.append(int(r.headers["retry-after"]))

                async with trio.open_nursery() as nursery:
                    for _ in range(16):
                        nursery.start_soon(guesser)
                assert len(statuses) == 2000
                checked = statuses.count(401)
                assert checked <= 5, f"{checked} of 2000 guesses were checked"
                assert statuses.count(429) == 2000 - checked
                assert min(retry_after) >= 1
                # while slowed, even the right password is not checked (no oracle) ...
                right = await http.delete("/api/v1/federations/sleo", headers=basic(PASSWORD))
                assert right.status_code == 429
                assert (await http.get("/api/v1/federations/sleo")).status_code == 200
            # ... but the organiser at another address is not locked out
            elsewhere = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
            async with httpx.AsyncClient(base_url=url, timeout=10, transport=elsewhere) as http:
                ok = await http.delete("/api/v1/federations/sleo", headers=basic(PASSWORD))
                assert ok.status_code == 200
