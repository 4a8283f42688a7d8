"""Operator keys and signed orders: key files, signing and verifying, retiring, tampering, the
wire form, who may change a station (RemoteAuthority), and ``stagemesh keygen --operator``."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from roles import (
    ConfigFileError,
    OperatorKey,
    OperatorKeyError,
    OperatorKeyring,
    Order,
    RemoteAuthority,
    RoleConfig,
    Unauthorized,
)

CONFIG = RoleConfig.from_dict({"command": {"a": {"timestamp": 1, "command": ["true"]}}})


def order(station: str = "/room/cam", issued: int = 10) -> Order:
    return Order.for_config("fed", station, CONFIG, issued=issued)


def test_a_signed_order_verifies_and_any_change_breaks_it() -> None:
    key = OperatorKey.generate()
    keyring = OperatorKeyring((key.public("crew"),))
    signed = key.sign(order())
    assert keyring.verify(signed).comment == "crew"
    again = Order.from_text(signed.to_text())
    assert again == signed and keyring.verify(again).key_id == key.key_id
    for field, value in (
        ("station", "/room/other"),
        ("federation", "else"),
        ("issued", 11),
        ("mode", "merge"),
        ("config", {"command": {"a": {"timestamp": 1, "command": ["sh"]}}}),
    ):
        altered = Order.from_dict({**signed.to_dict(), field: value})
        with pytest.raises(Unauthorized, match="does not match"):
            keyring.verify(altered)
    with pytest.raises(Unauthorized, match="no operator signature"):
        keyring.verify(order())
    with pytest.raises(Unauthorized, match="not one of this node's operator keys"):
        keyring.verify(OperatorKey.generate().sign(order()))


def test_a_retired_key_is_refused(tmp_path: Path) -> None:
    key, other = OperatorKey.generate(), OperatorKey.generate()
    public = tmp_path / "crew.pub"
    public.write_text(
        f"# the crew\n{key.public('lead').line()}\nretired {other.public('lost laptop').line()}\n"
    )
    keyring = OperatorKeyring.load([public])
    assert [k.key_id for k in keyring.active()] == [key.key_id]
    with pytest.raises(Unauthorized, match="is retired"):
        keyring.verify(other.sign(order()))
    assert keyring.to_list()[1] == {
        "key_id": other.key_id,
        "comment": "lost laptop",
        "retired": True,
    }
    public.write_text("ed25519 not-base64!\n")
    with pytest.raises(OperatorKeyError, match=r"crew\.pub:1: the key is not base64"):
        OperatorKeyring.load([public])


def test_key_files_are_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "crew.key"
    key = OperatorKey.generate()
    public = key.write(path, "crew")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert OperatorKey.load(path).key_id == key.key_id
    assert OperatorKeyring.load([public]).find(key.key_id) is not None
    with pytest.raises(FileExistsError):
        OperatorKey.generate().write(path)
    os.chmod(path, 0o644)
    with pytest.raises(OperatorKeyError, match="can be read by other users"):
        OperatorKey.load(path)
    (tmp_path / "junk").write_text("junk")
    os.chmod(tmp_path / "junk", 0o600)
    with pytest.raises(OperatorKeyError, match="not an operator private key"):
        OperatorKey.load(tmp_path / "junk")


def test_order_texts_from_the_network_are_checked() -> None:
    good = order().to_dict()
    for bad, where in (
        ("x" * 300_000, r"\$"),
        ("{", "invalid JSON"),
        (json.dumps({**good, "v": 2}), r"\$\.v"),
        (json.dumps({**good, "issued": -1}), r"\$\.issued"),
        (json.dumps({**good, "issued": True}), r"\$\.issued"),
        (json.dumps({**good, "key": "xyz"}), r"\$\.key"),
        (json.dumps({**good, "sig": "AAAA"}), "needs its key id"),
        (json.dumps({**good, "kind": "control", "action": "rm"}), r"\$\.action"),
        (json.dumps({**good, "station": "/a b/c"}), r"\$\.station"),
        ("[" * 5000 + "]" * 5000, "invalid JSON: nested too deeply"),
    ):
        with pytest.raises(ConfigFileError, match=where):
            Order.from_text(bad)


def test_who_may_change_a_station_remotely() -> None:
    key = OperatorKey.generate()
    keys = OperatorKeyring((key.public(),))
    signed, unsigned = key.sign(order()), order()
    modes = {
        (True, True, False): "signed",
        (True, False, False): "refused",
        (False, True, False): "refused",
        (False, False, False): "refused",
        (False, True, True): "signed",
        (False, False, True): "unsigned",
    }
    for (keyed, has_keys, insecure), mode in modes.items():
        authority = RemoteAuthority("fed", keyed, keys if has_keys else OperatorKeyring(), insecure)
        assert authority.mode == mode
        assert authority.accepts(signed) is (mode != "refused")
        assert authority.accepts(unsigned) is (mode == "unsigned")
    authority = RemoteAuthority("fed", True, keys)
    with pytest.raises(Unauthorized, match="for /room/cam, not /room/other"):
        authority.check(signed, station="/room/other")
    with pytest.raises(Unauthorized, match="federation 'fed', not 'other'"):
        RemoteAuthority("other", True, keys).check(signed)


def test_keygen_writes_an_operator_key_pair(tmp_path: Path) -> None:
    def keygen(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mesh", "keygen", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    path = tmp_path / "crew.key"
    made = keygen("--operator", str(path), "--comment", "lead")
    assert made.returncode == 0, made.stderr
    key = OperatorKey.load(path)
    assert key.key_id in made.stderr
    assert (tmp_path / "crew.key.pub").read_text().splitlines()[-1].endswith(" lead")
    again = keygen("--operator", str(path))
    assert again.returncode == 1 and "exists; not overwriting" in again.stderr
    neither = keygen()
    assert neither.returncode == 2 and "--operator" in neither.stderr
