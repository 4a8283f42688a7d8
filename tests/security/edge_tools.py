"""What a hostile host on the venue's network does to a node's wire edge: forge and send
datagrams, capture and replay real ones, hold TCP connections, send oversized frames.

The security tests call these functions on loopback, and run them as a command inside a network
namespace when the attack must come from another host::

    python3 -m tests.security.edge_tools gossip HOST PORT --key-file K --federation F \\
        --to ID:INC --update '[2, "<id>", 5, "<reporter>"]'
    python3 -m tests.security.edge_tools hold HOST PORT --count 1000 --seconds 20
    python3 -m tests.security.edge_tools frames HOST PORT --count 64 --size 4194304
    python3 -m tests.security.edge_tools request HOST PORT --key-file K --federation F \\
        --to ID:INC --path /o1/h0
    python3 -m tests.security.edge_tools sniff IFACE --src IP --dst IP --count 5
    python3 -m tests.security.edge_tools send HOST PORT HEX...

Each prints one line of JSON with what it did (``hold`` prints ``holding N`` once the first
connections are open, then runs until killed or its time is up). Updates are given in their wire
form (``[kind, *fields]``, as :mod:`mesh._wire` sends them), and are built without the decoder's
checks: a forger is not bound by them.
"""

from __future__ import annotations

import argparse
import json
import resource
import secrets
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mesh._keys import load_keyring
from mesh._wire import (
    Dead,
    Envelope,
    Gossip,
    Keyring,
    Lease,
    MemberRecord,
    Message,
    Publish,
    Request,
    Suspect,
    Update,
    WireCodec,
)

__all__ = [
    "forge",
    "hold_connections",
    "parse_update",
    "request",
    "send_datagrams",
    "send_frames",
    "sniff",
]

STRANGER = secrets.token_hex(16)
"""The node id the attacker sends as (no node has it)."""


def parse_update(item: Sequence[Any]) -> Update:
    """An update from its wire form ``[kind, *fields]``, without any validation."""
    kind, *fields = item
    if kind == MemberRecord.KIND:
        node_id, name, orchestra, address, incarnation, meta, status = fields
        return MemberRecord(node_id, name, orchestra, tuple(address), incarnation, meta, status)  # type: ignore[arg-type]
    cls = {Suspect.KIND: Suspect, Dead.KIND: Dead, Lease.KIND: Lease, Publish.KIND: Publish}[kind]
    return cls(*fields)  # type: ignore[no-any-return]


def forge(
    body: Message,
    *,
    federation: str,
    keyring: Keyring | None,
    to: tuple[str, int] | None,
    sender: str = STRANGER,
    incarnation: int = 0,
) -> bytes:
    """One datagram as a member of *federation* holding *keyring* would send it to the node
    *to* (id, incarnation): what a key holder, or anyone in an open federation, can make."""
    env = Envelope(
        federation,
        sender,
        incarnation,
        secrets.randbelow(2**40),
        time.time(),
        body,
        None if to is None else to[0],
        0 if to is None else to[1],
    )
    return WireCodec(keyring).encode(env, 1 << 20)


def send_datagrams(address: tuple[str, int], datagrams: Sequence[bytes]) -> None:
    """Send each datagram from a fresh UDP socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for data in datagrams:
            s.sendto(data, address)


def hold_connections(address: tuple[str, int], count: int, seconds: float) -> dict[str, int]:
    """Keep *count* TCP connections to *address* open and silent for *seconds*, opening a new
    one whenever the node closes one. Returns how many were opened and closed by the node."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 64)), hard))
    opened = closed = failed = 0
    live: list[socket.socket] = []
    deadline = time.monotonic() + seconds
    announced = False
    try:
        while time.monotonic() < deadline:
            while len(live) < count and time.monotonic() < deadline:
                try:
                    s = socket.create_connection(address, timeout=2)
                except OSError:
                    failed += 1
                    continue
                s.setblocking(False)
                live.append(s)
                opened += 1
            if not announced:
                print(f"holding {count}", flush=True)
                announced = True
            time.sleep(0.05)
            for s in list(live):
                try:
                    if s.recv(1, socket.MSG_PEEK) != b"":
                        continue  # the node said something: still open
                except BlockingIOError:
                    continue  # open and silent
                except OSError:
                    pass  # reset by the node
                live.remove(s)
                s.close()
                closed += 1
    finally:
        for s in live:
            s.close()
    return {"opened": opened, "closed_by_node": closed, "connect_failed": failed}


def send_frames(address: tuple[str, int], count: int, size: int) -> dict[str, int]:
    """Open *count* connections; on each, announce a frame of *size* bytes the way a TCP frame
    starts (a 4-byte length, as version 1 of the wire framed it, or a version-2 prefix with a
    made-up tag) and stream *size* bytes of junk, until the node closes it. Returns the bytes
    the node accepted in all."""
    accepted = 0
    chunk = secrets.token_bytes(65536)
    socks = []
    for i in range(count):
        s = socket.create_connection(address, timeout=5)
        if i % 2:
            prefix = b"SF\x02\x01" + struct.pack("!I", size) + secrets.token_bytes(16)
        else:
            prefix = struct.pack("!I", size)
        s.sendall(prefix)
        socks.append(s)
    for s in socks:
        sent = 0
        try:
            while sent < size:
                sent += s.send(chunk[: min(len(chunk), size - sent)])
        except OSError:
            pass
        accepted += sent
    for s in socks:
        s.close()
    return {"connections": count, "bytes_sent": accepted}


def request(
    address: tuple[str, int],
    *,
    federation: str,
    keyring: Keyring | None,
    to: tuple[str, int],
    path: str,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """One request frame from a member (holding *keyring*) to the node *to* at *address*:
    its answer (any reply shows the node served the connection) and the seconds it took."""
    codec = WireCodec(keyring)
    started = time.monotonic()
    body = Request(1, path, "echo", None)
    env = Envelope(federation, STRANGER, 0, 1, time.time(), body, to[0], to[1])
    try:
        with socket.create_connection(address, timeout=timeout) as s:
            s.settimeout(max(0.1, timeout - (time.monotonic() - started)))
            s.sendall(codec.encode_frame(env))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError as exc:
        return {"ok": False, "error": str(exc), "seconds": time.monotonic() - started}
    seconds = time.monotonic() - started
    prefix = codec.frame_prefix_size
    if len(data) <= prefix:
        return {"ok": False, "error": f"{len(data)} bytes of answer", "seconds": seconds}
    reply = codec.decode_frame(data[prefix:], STRANGER).body
    return {"ok": True, "reply": type(reply).__name__, "seconds": seconds}


def sniff(interface: str, src: str, dst: str, port: int, count: int, seconds: float) -> list[str]:
    """Capture up to *count* UDP payloads from *src* to *dst*:*port* seen on *interface*
    (a raw packet socket: root, in the namespace that has the interface), as hex."""
    found: list[str] = []
    # Every protocol (ETH_P_ALL): a bridge port hands IPv4 frames to the bridge before an
    # ETH_P_IP socket would see them.
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as s:
        s.bind((interface, 0))
        s.settimeout(0.2)
        deadline = time.monotonic() + seconds
        while len(found) < count and time.monotonic() < deadline:
            try:
                frame = s.recv(65536)
            except TimeoutError:
                continue
            ip = frame[14:]
            if frame[12:14] != b"\x08\x00" or len(ip) < 28 or ip[9] != 17:  # not IPv4 UDP
                continue
            header = (ip[0] & 15) * 4
            if socket.inet_ntoa(ip[12:16]) != src or socket.inet_ntoa(ip[16:20]) != dst:
                continue
            if struct.unpack("!H", ip[header + 2 : header + 4])[0] != port:
                continue
            payload = ip[header + 8 : struct.unpack("!H", ip[2:4])[0]]
            if payload[:2] == b"SM":
                found.append(payload.hex())
    return found


def _address(host: str, port: str) -> tuple[str, int]:
    return host, int(port)


def _to(text: str) -> tuple[str, int]:
    node_id, _, incarnation = text.partition(":")
    return node_id, int(incarnation)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("gossip", "hold", "frames", "request", "send"):
        p = sub.add_parser(name)
        p.add_argument("host")
        p.add_argument("port")
        if name in ("gossip", "request"):
            p.add_argument("--key-file", type=Path)
            p.add_argument("--federation", default="default")
            p.add_argument("--to", type=_to, required=True)
    sub.choices["gossip"].add_argument("--update", action="append", default=[])
    sub.choices["hold"].add_argument("--count", type=int, default=1000)
    sub.choices["hold"].add_argument("--seconds", type=float, default=30.0)
    sub.choices["frames"].add_argument("--count", type=int, default=64)
    sub.choices["frames"].add_argument("--size", type=int, default=4 << 20)
    sub.choices["request"].add_argument("--path", required=True)
    sub.choices["send"].add_argument("datagrams", nargs="+")
    p = sub.add_parser("sniff")
    p.add_argument("interface")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, default=7471)
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    out: Any
    if args.command == "sniff":
        out = sniff(args.interface, args.src, args.dst, args.port, args.count, args.seconds)
    else:
        address = _address(args.host, args.port)
        keyring = load_keyring(args.key_file) if getattr(args, "key_file", None) else None
        if args.command == "gossip":
            updates = tuple(parse_update(json.loads(u)) for u in args.update)
            data = forge(Gossip(updates), federation=args.federation, keyring=keyring, to=args.to)
            send_datagrams(address, [data])
            out = {"sent": len(data)}
        elif args.command == "send":
            send_datagrams(address, [bytes.fromhex(h) for h in args.datagrams])
            out = {"sent": len(args.datagrams)}
        elif args.command == "hold":
            out = hold_connections(address, args.count, args.seconds)
        elif args.command == "frames":
            out = send_frames(address, args.count, args.size)
        else:
            out = request(
                address, federation=args.federation, keyring=keyring, to=args.to, path=args.path
            )
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
