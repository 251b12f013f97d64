"""
The server process of L{bench.compare}: one transport, one listening port on
127.0.0.1 (port 0: the kernel picks an ephemeral port, never 9945).

It prints one JSON line when listening (port, pid, node ID, fd limit), then
obeys commands, one per line on stdin, each answered with one JSON line:

  - C{stats}: C{gc.collect()}, then RSS in KiB, connections open and
    connections that carried an application message (authenticated);
  - C{snap} / C{top N}: with C{--tracemalloc}, take the baseline snapshot /
    list the N biggest allocation sites grown since;
  - C{quit} (or end of input): stop (and write the profile, if any).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from google.protobuf.wrappers_pb2 import BytesValue
from twisted.internet import stdio
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from bench._common import (
    FORBIDDEN_PORT,
    HOST,
    EnvelopeReceiver,
    ServerLogic,
    TrackedServer,
    add_common_arguments,
    collect_and_measure,
    emit,
    quiet_logging,
    raise_fd_limit,
    run_profiled,
    tls_server_options,
)
from botd2.keys import PrivateKey
from botd2.protocol import PeerFactory, PeerProtocol

BACKLOG = 1024


class BotdServerPeer(ServerLogic, PeerProtocol):
    """The botd2 application: echo, count, acknowledge."""

    messageTypes = (BytesValue,)

    def messageReceived(self, message: Any) -> None:
        self.handle(message)


class FrameServer(TrackedServer, EnvelopeReceiver):
    """The baseline application (plain TCP or TLS): the same, over Int32StringReceiver."""


class FrameServerFactory(Factory):
    protocol = FrameServer
    noisy = False

    def __init__(self) -> None:
        self.live: set[FrameServer] = set()


class Commands(LineReceiver):
    """The harness's commands on stdin."""

    delimiter = b"\n"

    def __init__(self, counts: Any, reactor: Any, trace: bool) -> None:
        self.counts = counts
        self.reactor = reactor
        self.trace = trace
        self.snapshot: Any = None

    def lineReceived(self, line: bytes) -> None:
        words = line.decode().split()
        if not words:
            return
        if words[0] == "stats":
            rss = collect_and_measure()
            conns, authenticated = self.counts()
            emit({"rss_kib": rss, "conns": conns, "authenticated": authenticated})
        elif words[0] == "snap" and self.trace:
            import tracemalloc

            collect_and_measure()
            self.snapshot = tracemalloc.take_snapshot()
            emit({"snap": True, "traced_kib": tracemalloc.get_traced_memory()[0] // 1024})
        elif words[0] == "top" and self.trace:
            emit({"top": self.top(int(words[1]) if len(words) > 1 else 25)})
        elif words[0] == "quit":
            self.reactor.stop()
        else:
            emit({"error": f"unknown command {line!r}"})

    def top(self, n: int) -> list[str]:
        import tracemalloc

        collect_and_measure()
        now = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        stats = now.compare_to(self.snapshot, "lineno")
        total = sum(s.size_diff for s in stats)
        lines = [f"total traced growth {total / 1024:,.0f} KiB; by file:"]
        for s in now.compare_to(self.snapshot, "filename")[:8]:
            frame = s.traceback[0]
            lines.append(
                f"{s.size_diff / 1024:9,.1f} KiB {s.count_diff:+8d} blocks"
                f"  {frame.filename.split('site-packages/')[-1]}"
            )
        lines.append("by line:")
        for s in stats[:n]:
            frame = s.traceback[0]
            lines.append(
                f"{s.size_diff / 1024:9,.1f} KiB {s.count_diff:+8d} blocks"
                f"  {frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
            )
        return lines

    def connectionLost(self, reason: object = None) -> None:
        if self.reactor.running:
            self.reactor.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._server")
    add_common_arguments(parser)
    parser.add_argument("--max-conns", type=int, default=1000)
    parser.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args(argv)

    nofile = raise_fd_limit()
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(1)
    quiet_logging()
    from twisted.internet import reactor

    node = ""
    counts: Any
    if args.transport == "botd2":
        identity = PrivateKey.generate()
        # The admission caps are raised so that the RSS figure can hold
        # --max-conns connections made by a few client processes, 32 at a time each.
        factory = PeerFactory(
            identity,
            protocol=BotdServerPeer,
            maxConnections=max(1000, args.max_conns),
            maxHandshakes=1024,
            maxHandshakesPerAddress=1024,
        )
        node = factory.nodeID

        def counts() -> tuple[int, int]:
            return len(factory.connections), len(factory.peers)

        port = reactor.listenTCP(0, factory, backlog=BACKLOG, interface=HOST)  # type: ignore[attr-defined]
    elif args.transport == "floor":
        from bench._floor import FloorServerFactory

        floor = FloorServerFactory()
        node = floor.static_pub.hex()

        def counts() -> tuple[int, int]:
            return len(floor.live), sum(1 for p in floor.live if p.seen)

        port = reactor.listenTCP(0, floor, backlog=BACKLOG, interface=HOST)  # type: ignore[attr-defined]
    else:
        frames = FrameServerFactory()

        def counts() -> tuple[int, int]:
            return len(frames.live), sum(1 for p in frames.live if p.seen)

        if args.transport == "tcp":
            port = reactor.listenTCP(0, frames, backlog=BACKLOG, interface=HOST)  # type: ignore[attr-defined]
        else:
            options = tls_server_options(args.certs, args.tls_groups)
            port = reactor.listenSSL(0, frames, options, backlog=BACKLOG, interface=HOST)  # type: ignore[attr-defined]

    number = port.getHost().port
    if number == FORBIDDEN_PORT:  # pragma: no cover - port 0 never picks it
        raise SystemExit("refusing to serve on port 9945")
    stdio.StandardIO(Commands(counts, reactor, args.tracemalloc))
    emit(
        {
            "port": number,
            "pid": os.getpid(),
            "node": node,
            "nofile": list(nofile),
            "reactor": type(reactor).__name__,
            "rss_kib": collect_and_measure(),
        }
    )
    run_profiled(args.cprofile, reactor.run)  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
