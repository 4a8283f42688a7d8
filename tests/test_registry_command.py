"""``stagemesh registry`` as a real process: flags, environment, default database, signals."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from registry_bridge._command import default_db_path


def test_default_db_follows_xdg_state_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_db_path() == tmp_path / "stagemesh" / "registry.db"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_db_path() == tmp_path / ".local" / "state" / "stagemesh" / "registry.db"


def test_bad_bind_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mesh", "registry", "--bind", "nonsense"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "HOST:PORT" in done.stderr


def test_empty_password_file_is_a_failure(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mesh",
            "registry",
            "--bind",
            "127.0.0.1:0",
            "--db",
            str(tmp_path / "r.db"),
            "--admin-password-file",
            str(tmp_path / "pw"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1 and "is empty" in done.stderr


async def test_serves_with_default_db_and_password_file_and_stops_on_sigint(
    tmp_path: Path,
) -> None:
    (tmp_path / "pw").write_text("opensesame\n")
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    env.pop("STAGEMESH_ADMIN_PASSWORD", None)
    with trio.fail_after(30):
        proc = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "mesh",
                "registry",
                "--bind",
                "127.0.0.1:0",
                "--admin-password-file",
                str(tmp_path / "pw"),
                "--ttl",
                "5",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            assert proc.stdout is not None
            buf = b""
            while b"\n" not in buf:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk
                buf += chunk
            line = buf.decode().splitlines()[0]
            db = tmp_path / "state" / "stagemesh" / "registry.db"
            assert line.startswith("ready registry=http://127.0.0.1:") and line.endswith(f"db={db}")
            url = line.split()[1].removeprefix("registry=")
            auth = {"Authorization": "Basic " + base64.b64encode(b"x:opensesame").decode()}
            async with httpx.AsyncClient(base_url=url) as http:
                r = await http.post(
                    "/api/v1/federations/f/registrations",
                    json={"orchestra": "o", "name": "n", "create": True},
                )
                assert r.json()["ttl"] == 5.0
                assert (await http.delete("/api/v1/federations/f", headers=auth)).status_code == 200
            assert db.exists()
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proc.stdout.aclose()  # type: ignore[union-attr]
