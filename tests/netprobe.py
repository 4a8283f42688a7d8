"""Small UDP and TCP probes run inside a test's network namespaces (by tests/test_impair.py
and bench/impair.py) to see what the network between them does. Each prints JSON lines.

    netprobe.py sink PORT SECONDS            one line per datagram: seq, one-way delay (s)
    netprobe.py send ADDR PORT COUNT GAP     COUNT datagrams, GAP seconds apart, then a summary
    netprobe.py echo PORT SECONDS            echoes every datagram back
    netprobe.py ping ADDR PORT COUNT         round trips, one at a time: p50/p99/min/max, lost
    netprobe.py blast ADDR PORT SECONDS      as fast as it can; the summary says how many sent
    netprobe.py count PORT SECONDS           counts datagrams: one summary line at the end
    netprobe.py tcp-serve PORT               answers one TCP connection: echoes a line
    netprobe.py tcp-ask ADDR PORT            connects, sends a line, prints what came back

One-way delays use ``time.monotonic()``, which is the same clock in every network namespace
of a machine. Every probe ends by itself (a number of datagrams or seconds).
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

HEADER = struct.Struct("!Id")  # sequence number, monotonic send time


def _say(**doc: object) -> None:
    print(json.dumps(doc), flush=True)


def _datagrams(port: int, seconds: float) -> Iterator[tuple[socket.socket, bytes, Any]]:
    """Bind *port*, say ``ready``, then yield each datagram (with the socket and the sender)
    until *seconds* pass without end."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("0.0.0.0", port))
        _say(ready=True)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data, peer = s.recvfrom(65536)
            except TimeoutError:
                break
            yield s, data, peer


def sink(port: int, seconds: float) -> None:
    for _, data, _ in _datagrams(port, seconds):
        now = time.monotonic()
        if len(data) >= HEADER.size:
            seq, sent = HEADER.unpack_from(data)
            _say(seq=seq, delay=now - sent)


def send(addr: str, port: int, count: int, gap: float, size: int = 64) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        start = time.monotonic()
        for seq in range(count):
            due = start + seq * gap
            while (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            s.sendto(HEADER.pack(seq, time.monotonic()).ljust(size, b"\0"), (addr, port))
        _say(sent=count)


def echo(port: int, seconds: float) -> None:
    for s, data, peer in _datagrams(port, seconds):
        s.sendto(data, peer)


def ping(addr: str, port: int, count: int, timeout: float = 1.0) -> None:
    rtts: list[float] = []
    lost = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        for seq in range(count):
            sent = time.monotonic()
            s.sendto(HEADER.pack(seq, sent), (addr, port))
            while True:
                try:
                    data = s.recv(65536)
                except TimeoutError:
                    lost += 1
                    break
                if HEADER.unpack_from(data)[0] == seq:
                    rtts.append(time.monotonic() - sent)
                    break
    rtts.sort()

    def pct(q: float) -> float | None:
        return rtts[min(len(rtts) - 1, int(q * len(rtts)))] if rtts else None

    _say(count=count, lost=lost, p50=pct(0.5), p99=pct(0.99), min=rtts[0] if rtts else None,
         max=rtts[-1] if rtts else None)  # fmt: skip


def blast(addr: str, port: int, seconds: float, size: int = 100) -> None:
    sent = 0
    payload = b"\0" * size
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(100):
                try:
                    s.sendto(payload, (addr, port))
                    sent += 1
                except OSError:  # ENOBUFS: the interface queue is full
                    pass
    _say(sent=sent, seconds=seconds)


def count(port: int, seconds: float) -> None:
    got = sum(1 for _ in _datagrams(port, seconds))
    _say(received=got)


def tcp_serve(port: int) -> None:
    with socket.create_server(("0.0.0.0", port)) as server:
        _say(ready=True)
        server.settimeout(30)
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as f:
            f.write(b"echo " + f.readline())
            f.flush()


def tcp_ask(addr: str, port: int) -> None:
    with socket.create_connection((addr, port), timeout=10) as conn, conn.makefile("rwb") as f:
        f.write(b"x" * 100_000 + b"\n")  # several segments: TCP through the network
        f.flush()
        _say(answer_bytes=len(f.readline()))


def main(argv: list[str]) -> None:
    """Run the probe *argv* names (see the module docstring)."""
    command, *args = argv
    if command == "sink":
        sink(int(args[0]), float(args[1]))
    elif command == "send":
        send(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif command == "echo":
        echo(int(args[0]), float(args[1]))
    elif command == "ping":
        ping(args[0], int(args[1]), int(args[2]))
    elif command == "blast":
        blast(args[0], int(args[1]), float(args[2]))
    elif command == "count":
        count(int(args[0]), float(args[1]))
    elif command == "tcp-serve":
        tcp_serve(int(args[0]))
    elif command == "tcp-ask":
        tcp_ask(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown probe {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
