"""The federation's key file (mesh/_keys.py) and a rotation as the codec sees it: which key
signs when, what is accepted during the overlap, what is refused once a key is retired, and
the ``keygen --add`` / ``--retire`` commands."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mesh._cli import UsageError
from mesh._inbound import MAX_AGE, Inbound
from mesh._keys import (
    KeyEntry,
    add_key,
    keyring_at,
    load_keyring,
    next_change,
    parse_entries,
    read_entries,
    retire_key,
    write_key_file,
)
from mesh._wire import Envelope, Gossip, InvalidMessage, Keyring, WireCodec

ME, PEER = "a" * 32, "b" * 32
T0 = 1_800_000_000.0
K1, K2 = bytes(range(32)), bytes(range(32, 64))


def datagram(keyring: Keyring, seq: int = 1, sent_at: float = T0) -> bytes:
    env = Envelope("f", PEER, 0, seq, sent_at, Gossip(()), ME, 0)
    return WireCodec(keyring).encode(env)


def refusal(keyring: Keyring, data: bytes, now: float = T0) -> str | None:
    inbound = Inbound(WireCodec(keyring), "f", ME, 0)
    return None if inbound.datagram(data, now) is not None else next(iter(inbound.rejected))


def test_a_plain_key_file_signs_with_its_first_key() -> None:
    text = f"# comment\n3 {K1.hex()}\n\n7 {K2.hex()}  # another\n"
    keyring = keyring_at(parse_entries(text, "k"), T0)
    assert (keyring.primary, sorted(keyring.keys), keyring.retired) == (3, [3, 7], frozenset())


def test_a_new_key_is_accepted_at_once_and_signs_from_its_time() -> None:
    entries = [KeyEntry(2, K2, T0 + 600), KeyEntry(1, K1)]
    during, after = keyring_at(entries, T0), keyring_at(entries, T0 + 600)
    assert (during.primary, after.primary) == (1, 2)
    assert next_change(entries, T0) == T0 + 600 and next_change(entries, T0 + 600) is None
    # During the overlap a node that already signs with the new key and one that does not yet
    # understand each other; a node without the new key would not (why the overlap exists).
    assert refusal(during, datagram(after)) is None
    assert refusal(after, datagram(during)) is None
    assert refusal(Keyring.single(K1), datagram(after)) == "unknown key"


def test_a_retired_key_is_refused_and_counted_as_retired() -> None:
    entries = [KeyEntry(2, K2, T0 - 1), KeyEntry(1, None)]
    keyring = keyring_at(entries, T0)
    assert keyring.retired == {1} and list(keyring.keys) == [2]
    assert refusal(keyring, datagram(Keyring.single(K1))) == "retired key"
    assert refusal(keyring, datagram(Keyring.single(K1, key_id=9))) == "unknown key"
    with pytest.raises(InvalidMessage, match="retired"):
        WireCodec(keyring).frame_length(
            WireCodec(Keyring.single(K1)).encode_frame(
                Envelope("f", PEER, 0, 1, T0, Gossip(()), ME, 0)
            )[: WireCodec(keyring).frame_prefix_size]
        )


def test_a_capture_replayed_outside_the_window_is_refused() -> None:
    keyring = Keyring.single(K1)
    captured = datagram(keyring, sent_at=T0)
    assert refusal(keyring, captured, now=T0 + MAX_AGE + 1) == "stale"
    assert refusal(keyring, captured, now=T0 - MAX_AGE - 1) == "stale"
    inbound = Inbound(WireCodec(keyring), "f", ME, 0)
    assert inbound.datagram(captured, T0) is not None
    assert inbound.datagram(captured, T0 + 1) is None and inbound.rejected["replayed"] == 1


@pytest.mark.parametrize(
    ("text", "what"),
    [
        (f"1 {K1.hex()}\n1 {K2.hex()}\n", "k:2: key id 1 appears twice"),
        (f"1 {K1.hex()} signs-from tomorrow\n", "k:1: signs-from wants a UTC time"),
        (f"1 {K1.hex()} signs-from 2026-12-04T23:10:00\n", "k:1: signs-from wants a UTC time"),
        (f"1 {K1.hex()} from 2026-12-04T23:10:00Z\n", "k:1: expected 'signs-from'"),
        ("retired one\n", "k:1: expected 'retired <key id>'"),
        (f"300 {K1.hex()}\n", "k:1: key id must be 1-255"),
        ("1 abcd\n", "k:1: the key must be at least 16 bytes"),
        (f"retired 2\n# 1 {K1.hex()}\n", "k: no key in the file"),
    ],
)
def test_a_bad_key_file_names_the_line(text: str, what: str) -> None:
    with pytest.raises(UsageError, match=what):
        parse_entries(text, "k")


def test_add_then_retire_rotates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "federation.key"
    write_key_file(path)
    added = add_key(path, T0, overlap=300)
    assert (added.key_id, added.signs_from) == (2, T0 + 300)
    assert [e.key_id for e in read_entries(path)] == [2, 1]
    assert load_keyring(path, T0).primary == 1 and load_keyring(path, T0 + 300).primary == 2
    with pytest.raises(UsageError, match="key 2 signs only from"):
        add_key(path, T0 + 10)
    with pytest.raises(UsageError, match="key 1 signs now"):
        retire_key(path, 1, T0 + 10)
    retire_key(path, 1, T0 + 300)
    text = path.read_text()
    assert "retired 1\n" in text and K1.hex() not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(UsageError, match="already retired"):
        retire_key(path, 1, T0 + 300)
    with pytest.raises(UsageError, match="key 2 signs now"):
        retire_key(path, 2, T0 + 300)
    assert add_key(path, T0 + 400).key_id == 3  # a retired id is not used again


def _keygen(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEMESH_")}
    return subprocess.run(
        [sys.executable, "-m", "mesh", "keygen", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_keygen_add_and_retire(tmp_path: Path) -> None:
    path = tmp_path / "federation.key"
    assert _keygen(str(path)).returncode == 0
    taken = _keygen(str(path))
    assert taken.returncode == 1 and "--add adds one" in taken.stderr
    added = _keygen("--add", "--overlap", "0", str(path))
    assert added.returncode == 0, added.stderr
    assert "added federation key 2" in added.stderr and "accepted now, signs from" in added.stderr
    retired = _keygen("--retire", "1", str(path))
    assert retired.returncode == 0, retired.stderr
    keyring = load_keyring(path)
    assert (keyring.primary, keyring.retired) == (2, {1})
    refused = _keygen("--retire", "2", str(path))
    assert refused.returncode == 2 and "key 2 signs now" in refused.stderr
    both = _keygen("--add", "--retire", "2", str(path))
    assert both.returncode == 2 and "not both" in both.stderr
