"""A discovery-only program for multi-host tests: runs mesh's discovery drivers and prints
each hint as a JSON line (no membership, no gossip socket).

    python3 tests/discovery_probe.py --federation f --name a --bind 10.77.0.1 --no-mdns

First line: ``{"event": "ready", "node_id": ..., "interfaces": [...]}``; then one
``{"event": "hint", "address": [host, port], "source": ..., "node_id": ..., "name": ...,
"orchestra": ...}`` per hint. SIGTERM or SIGINT stop it cleanly (mDNS goodbyes are sent).
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal

import trio

from mesh._discovery import DiscoveryConfig, PeerHint, parse_seed, serve_discovery


def _print(obj: object) -> None:
    print(json.dumps(obj), flush=True)


def _emit(hint: PeerHint) -> None:
    _print(
        {
            "event": "hint",
            "address": list(hint.address),
            "source": hint.source,
            "node_id": hint.node_id,
            "name": hint.name,
            "orchestra": hint.orchestra,
        }
    )


async def _main(config: DiscoveryConfig) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            discovery = await nursery.start(serve_discovery, config, _emit)
            interfaces = config.choose_interfaces()
            _print(
                {
                    "event": "ready",
                    "node_id": config.node_id,
                    "interfaces": [a.address for a in interfaces.addresses],
                    "sources": sorted(discovery.statistics()),
                }
            )
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--federation", default="default")
    parser.add_argument("--orchestra", default="probe")
    parser.add_argument("--name", required=True)
    parser.add_argument("--node-id", default=None)
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=7471, help="the gossip port announced")
    parser.add_argument("--interface", action="append", default=[])
    parser.add_argument("--broadcast-port", type=int, default=7470)
    parser.add_argument("--seed", action="append", default=[])
    parser.add_argument("--no-mdns", action="store_true")
    parser.add_argument("--no-broadcast", action="store_true")
    args = parser.parse_args(argv)
    config = DiscoveryConfig(
        federation=args.federation,
        node_id=args.node_id or secrets.token_hex(16),
        name=args.name,
        orchestra=args.orchestra,
        gossip_port=args.port,
        bind=args.bind,
        interfaces=tuple(args.interface),
        beacon_port=args.broadcast_port,
        seeds=tuple(parse_seed(s) for s in args.seed),
        mdns=not args.no_mdns,
        broadcast=not args.no_broadcast,
    )
    trio.run(_main, config)


if __name__ == "__main__":
    main()
