"""
A day of one server node and many client nodes, in memory, on a simulated
clock: no sockets, no real time.

    python -m soak.simulate [--connections 500] [--hours 24] [--ping-interval 60]
                            [--client-ping-interval 60] [--message-gap 60,540]
                            [--max-delay 2] [--no-tracemalloc]

One server L{PeerFactory} running the example application
L{botd2.echo.EchoPeer}, and C{--connections} client L{PeerFactory}s (each
its own node: its own key, its own address 10.x.y.z), each dialling the
server once over an in-memory link whose every write arrives after a random
delay (0 to C{--max-delay} s), in order, as on TCP.  Every client sends
numbered C{StringValue}s, one every C{--message-gap} seconds (drawn
uniformly), and checks that the echoes come back once each and in order.
Keep-alive runs on both sides.  Every timer of every node runs on one
L{HeapClock}.

Checked at the end: no message lost, duplicated or reordered; no connection
closed (server and clients); keep-alive still answered on every connection
in the last interval; the process's traced Python memory (C{tracemalloc},
traced from the start: it counts the server, the clients and the links)
flat: current at hour 24 within L{MEMORY_MARGIN} of hour 2.

The clients do not run the idle-cipher sweep (a C{LoopingCall} every 5 s
in each of them: 8.6 million ticks a day for 500 clients, most of the run
time, and the clients' memory is not what is measured); the server does.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import itertools
import random
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import StringValue
from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from botd2.connection import Connection
from botd2.echo import EchoPeer
from botd2.keepalive import KeepAlive
from botd2.keys import PrivateKey
from botd2.protocol import BOTD2Protocol, PeerFactory, PeerProtocol

#: Traced memory at hour 24 may exceed hour 2 by at most this fraction.
MEMORY_MARGIN = 0.05
HOUR = 3600.0


# The clock ---------------------------------------------------------------------------


def _noop(call: DelayedCall) -> None:
    """A cancelled call stays in the heap and is skipped when it comes up."""


class HeapClock(Clock):
    """
    A C{task.Clock} whose pending calls sit in a heap.

    C{task.Clock} keeps one list and sorts it on every C{callLater} and pops
    its head with C{list.pop(0)}: with the timers of 1,000 connections each
    call costs a pass over all of them.  Here C{callLater} and each call run
    are O(log n); cancelled or rescheduled calls are skipped when popped.
    As with C{tests.test_keepalive.runUntil}, every call runs at its own time
    (C{seconds()} inside it is exactly the time it was due), not at the end
    of the step.
    """

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[float, int, DelayedCall]] = []
        self._order = itertools.count()

    def callLater(  # type: ignore[override]
        self, delay: float, f: Callable[..., object], *args: object, **kw: object
    ) -> DelayedCall:
        call = DelayedCall(self.rightNow + delay, f, args, kw, _noop, self._push, self.seconds)
        heapq.heappush(self._heap, (call.time, next(self._order), call))
        return call

    def _push(self, call: DelayedCall) -> None:
        heapq.heappush(self._heap, (call.getTime(), next(self._order), call))

    def callAt(self, when: float, f: Callable[..., object], *args: object) -> DelayedCall:
        """Like C{callLater}, at an absolute time (no rounding from C{when - now + now})."""
        call = DelayedCall(max(when, self.rightNow), f, args, {}, _noop, self._push,
                           self.seconds)
        heapq.heappush(self._heap, (call.time, next(self._order), call))
        return call

    def getDelayedCalls(self) -> list[DelayedCall]:
        return [call for _, _, call in self._heap if call.active()]

    def advance(self, amount: float) -> None:
        end = self.rightNow + amount
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= end:
            due, _, call = pop(heap)
            if call.cancelled or call.called or call.time + call.delayed_time != due:
                continue
            if due > self.rightNow:
                self.rightNow = due
            call.called = 1
            call.func(*call.args, **call.kw)
        self.rightNow = end

    def pending(self) -> int:
        """Heap entries, live or stale (a measure of the harness's own memory)."""
        return len(self._heap)


# The link ----------------------------------------------------------------------------

class _Fin:
    """The close of one side, in order after its data."""


_FIN = _Fin()


class LinkEnd:
    """
    One side's transport: what its protocol writes reaches the other side's
    protocol after a random delay, never before an earlier write (TCP keeps
    order: due times never decrease, and the clock runs calls due at the
    same time in the order they were made).  Nothing is recorded or queued
    here (each write rides on its own call): the link's memory does not
    grow.
    """

    def __init__(self, link: Link, protocol: Protocol, host: IPv4Address,
                 peer: IPv4Address) -> None:
        self.link = link
        self.protocol = protocol
        self.host = host
        self.peer = peer
        self.other: LinkEnd = self
        self.closing = False
        self.lost = False
        self._lastDue = 0.0

    def write(self, data: bytes) -> None:
        if data and not (self.closing or self.lost):
            self._send(bytes(data))

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if not (self.closing or self.lost):
            self.closing = True
            self._send(_FIN)

    def abortConnection(self) -> None:
        if not self.lost:
            self.closing = True
            self._send(_FIN)
            self.link.clock.callLater(0, self._lose, ConnectionLost("aborted"))

    def getPeer(self) -> IPv4Address:
        return self.peer

    def getHost(self) -> IPv4Address:
        return self.host

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.abortConnection()

    def _send(self, item: bytes | _Fin) -> None:
        link = self.link
        now = link.clock.rightNow
        due = max(now + link.rng.uniform(0.0, link.maxDelay), self._lastDue)
        self._lastDue = due
        link.clock.callAt(due, self._deliver, item)

    def _deliver(self, item: bytes | _Fin) -> None:
        other = self.other
        if other.lost:
            return
        if item is _FIN:
            other._lose(ConnectionDone())
            self._lose(ConnectionDone())
        else:
            assert isinstance(item, bytes)
            other.protocol.dataReceived(item)

    def _lose(self, reason: Exception) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(reason))


class Link:
    """Two protocols joined by two L{LinkEnd}s, on one clock."""

    def __init__(self, clock: HeapClock, rng: random.Random, maxDelay: float,
                 client: Protocol, server: Protocol, clientAddress: IPv4Address,
                 serverAddress: IPv4Address) -> None:
        self.clock = clock
        self.rng = rng
        self.maxDelay = maxDelay
        self.client = LinkEnd(self, client, clientAddress, serverAddress)
        self.server = LinkEnd(self, server, serverAddress, clientAddress)
        self.client.other, self.server.other = self.server, self.client
        server.makeConnection(self.server)
        client.makeConnection(self.client)


# The nodes -------------------------------------------------------------------------


class SeqClient(PeerProtocol):
    """
    Sends "I:N" with N = 0, 1, 2... every C{gap} seconds (uniform) and checks
    each echo ("echo: I:N") against the next N expected.  Counters only: no
    per-message memory.
    """

    messageTypes = (StringValue,)
    factory: ClientNode

    def peerAuthenticated(self) -> None:
        node = self.factory
        self.index = node.index
        self.sent = self.received = self.expected = self.duplicates = self.gaps = self.bad = 0
        self.lostReason: Failure | None = None
        self._rng = random.Random(node.index)
        self._prefix = f"echo: {node.index}:"
        self._next: Any = None
        node.app = self
        if node.sending:
            self._schedule()

    def _schedule(self) -> None:
        lo, hi = self.factory.gap
        self._next = self.factory.clock.callLater(self._rng.uniform(lo, hi), self._send)

    def _send(self) -> None:
        self.sendMessage(StringValue(value=f"{self.index}:{self.sent}"))
        self.sent += 1
        self._schedule()

    def stopSending(self) -> None:
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None

    def messageReceived(self, message: Message) -> None:
        assert isinstance(message, StringValue)
        if not message.value.startswith(self._prefix):
            self.bad += 1
            return
        seq = int(message.value[len(self._prefix):])
        self.received += 1
        if seq == self.expected:
            self.expected += 1
        elif seq < self.expected:
            self.duplicates += 1
        else:
            self.gaps += 1
            self.expected = seq + 1

    def peerDisconnected(self, reason: Failure) -> None:
        self.lostReason = reason
        self.stopSending()


class ClientNode(PeerFactory):
    """A client node: one identity, one connection; no idle-cipher sweep (see the module doc)."""

    index = 0
    gap = (60.0, 540.0)
    sending = True
    app: SeqClient | None = None

    def wrap(self, connection: Connection) -> BOTD2Protocol:
        proto = super().wrap(connection)
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()  # left cancelled, not None: wrap() starts no other
        return proto


class ServerApp(EchoPeer):
    """The example echo application, remembering why a connection ended."""

    lostReasons: ClassVar[list[str]] = []

    def peerDisconnected(self, reason: Failure) -> None:
        ServerApp.lostReasons.append(f"{self.peer.nodeID[:12]}: {reason.value}")
        super().peerDisconnected(reason)


# Keep-alive and log accounting -------------------------------------------------------


@dataclass
class KeepAliveCount:
    pongs: int = 0
    pings: int = 0
    floods: int = 0


def installKeepAliveCount(count: KeepAliveCount) -> Callable[[], None]:
    """
    Count accepted Pongs and arriving Pings of every L{KeepAlive} (all nodes
    of this process) into C{count}; return what undoes it.
    """
    pongReceived, pingArrived = KeepAlive.pongReceived, KeepAlive.pingArrived

    def countPong(ka: KeepAlive, pingID: str, now: float) -> bool:
        accepted = pongReceived(ka, pingID, now)
        count.pongs += accepted
        return accepted

    def countPing(ka: KeepAlive, now: float) -> bool:
        accepted = pingArrived(ka, now)
        count.pings += 1
        count.floods += not accepted
        return accepted

    def restore() -> None:
        KeepAlive.pongReceived = pongReceived  # type: ignore[method-assign]
        KeepAlive.pingArrived = pingArrived  # type: ignore[method-assign]

    KeepAlive.pongReceived = countPong  # type: ignore[method-assign,assignment]
    KeepAlive.pingArrived = countPing  # type: ignore[method-assign,assignment]
    return restore


@contextmanager
def countKeepAlive() -> Iterator[KeepAliveCount]:
    """Count accepted Pongs and arriving Pings (all nodes) while in the block."""
    count = KeepAliveCount()
    restore = installKeepAliveCount(count)
    try:
        yield count
    finally:
        restore()


@implementer(ILogObserver)
class _Warnings:
    """Counts log events at warn level and above (keeps the first few)."""

    def __init__(self) -> None:
        self.count = 0
        self.first: list[str] = []

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.warn:
            self.count += 1
            if len(self.first) < 5:
                from twisted.logger import formatEvent

                self.first.append(formatEvent(event))


# The day ---------------------------------------------------------------------------


@dataclass
class Config:
    connections: int = 500
    hours: int = 24
    pingInterval: float = 60.0
    clientPingInterval: float = 60.0
    pongTimeout: float = 30.0
    gap: tuple[float, float] = (60.0, 540.0)
    maxDelay: float = 2.0
    tracemalloc: bool = True
    seed: int = 0xDA7


@dataclass
class SimResult:
    config: Config
    memory: list[tuple[int, int]] = field(default_factory=list)
    sent: int = 0
    echoed: int = 0
    missing: int = 0
    duplicates: int = 0
    gaps: int = 0
    bad: int = 0
    clientDisconnects: list[str] = field(default_factory=list)
    serverDisconnects: list[str] = field(default_factory=list)
    serverPeers: int = 0
    serverConnections: int = 0
    authenticatedOnce: int = 0
    keepAlive: KeepAliveCount = field(default_factory=KeepAliveCount)
    pingedLastInterval: int = 0
    pongedLastInterval: int = 0
    warnings: int = 0
    firstWarnings: list[str] = field(default_factory=list)
    heap: int = 0
    seconds: float = 0.0

    def memoryAt(self, hour: int) -> int:
        return dict(self.memory).get(hour, 0)


def simulate(config: Config, progress: Callable[[str], None] = lambda _: None) -> SimResult:
    """Run the day of L{Config}; the figures (see L{check} for the verdict)."""
    started = time.perf_counter()
    result = SimResult(config)
    clock = HeapClock()
    rng = random.Random(config.seed)
    ServerApp.lostReasons = []
    server = PeerFactory(
        PrivateKey.from_int(config.seed), clock=clock, protocol=ServerApp,
        pingInterval=config.pingInterval, pongTimeout=config.pongTimeout,
        maxConnections=max(1000, config.connections + 10),
    )
    serverAddress = IPv4Address("TCP", "10.255.255.1", 9945)
    warnings = _Warnings()
    globalLogPublisher.addObserver(warnings)
    tracing = config.tracemalloc and not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    clients: list[ClientNode] = []
    try:
        with countKeepAlive() as counted:
            for i in range(config.connections):
                client = ClientNode(
                    PrivateKey.from_int(config.seed + 1 + i), clock=clock,
                    protocol=SeqClient, pingInterval=config.clientPingInterval,
                    pongTimeout=config.pongTimeout,
                )
                client.index = i
                client.gap = config.gap
                clients.append(client)
                address = IPv4Address("TCP", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                                      40000 + i % 20000)
                clock.callLater(rng.uniform(0.0, 60.0), _dial, clock, rng, config.maxDelay,
                                client, server, address, serverAddress)
            for hour in range(1, config.hours + 1):
                clock.advance(hour * HOUR - clock.seconds())
                gc.collect()
                traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
                result.memory.append((hour, traced))
                progress(f"  hour {hour:2d}: {len(server.peers)} peers, traced "
                         f"{traced / 2**20:.2f} MiB, {time.perf_counter() - started:.1f} s")
            # What keep-alive did in the last interval, before the end.
            now = clock.seconds()
            for proto in server.connections:
                ka = proto.keepalive
                if ka is not None and ka.lastPongAt is not None and \
                        now - ka.lastPongAt <= config.pingInterval + config.pongTimeout + \
                        2 * config.maxDelay + 30:
                    result.pongedLastInterval += 1
                if ka is not None and ka.lastPingArrival is not None and \
                        now - ka.lastPingArrival <= config.clientPingInterval + \
                        2 * config.maxDelay + 30:
                    result.pingedLastInterval += 1
            # Stop sending; let what is in flight land.
            for client in clients:
                client.sending = False
                if client.app is not None:
                    client.app.stopSending()
            clock.advance(4 * config.maxDelay + 10)
            result.keepAlive = counted
    finally:
        if tracing:
            tracemalloc.stop()
        globalLogPublisher.removeObserver(warnings)
    for client in clients:
        app = client.app
        if app is None:
            result.clientDisconnects.append(f"{client.index}: never authenticated")
            continue
        result.authenticatedOnce += 1
        result.sent += app.sent
        result.echoed += app.received
        result.missing += app.sent - app.expected
        result.duplicates += app.duplicates
        result.gaps += app.gaps
        result.bad += app.bad
        if app.lostReason is not None:
            result.clientDisconnects.append(f"{client.index}: {app.lostReason.value}")
    result.serverDisconnects = list(ServerApp.lostReasons)
    result.serverPeers = len(server.peers)
    result.serverConnections = len(server.connections)
    result.warnings = warnings.count
    result.firstWarnings = warnings.first
    result.heap = clock.pending()
    result.seconds = time.perf_counter() - started
    return result


def _dial(clock: HeapClock, rng: random.Random, maxDelay: float, client: ClientNode,
          server: PeerFactory, address: IPv4Address, serverAddress: IPv4Address) -> None:
    """C{client} dials C{server} from C{address} over a new L{Link}."""
    serverProto = server.buildProtocol(address)
    assert serverProto is not None, "refused by admission"
    clientProto = client.buildInitiator(server.identity.public_key)
    Link(clock, rng, maxDelay, clientProto, serverProto, address, serverAddress)


def check(r: SimResult) -> list[str]:
    """What went wrong, as sentences (empty: all held)."""
    c = r.config
    out = []
    if r.authenticatedOnce != c.connections or r.serverPeers != c.connections \
            or r.serverConnections != c.connections:
        out.append(f"connections: {r.authenticatedOnce} clients authenticated, the server "
                   f"holds {r.serverPeers} peers / {r.serverConnections} connections of "
                   f"{c.connections}")
    if r.clientDisconnects or r.serverDisconnects:
        out.append(f"disconnects: {r.clientDisconnects[:3]} {r.serverDisconnects[:3]}")
    if r.missing or r.duplicates or r.gaps or r.bad or r.echoed != r.sent:
        out.append(f"messages: sent {r.sent}, echoed {r.echoed}, missing {r.missing}, "
                   f"duplicated {r.duplicates}, gaps {r.gaps}, malformed {r.bad}")
    if r.keepAlive.floods:
        out.append(f"{r.keepAlive.floods} Pings arrived less than 30 s apart")
    if r.pongedLastInterval != c.connections or r.pingedLastInterval != c.connections:
        out.append(f"keep-alive at the end: {r.pongedLastInterval} server connections had a "
                   f"recent Pong, {r.pingedLastInterval} a recent client Ping, of "
                   f"{c.connections}")
    if r.warnings:
        out.append(f"{r.warnings} warnings or errors logged: {r.firstWarnings}")
    if c.tracemalloc and c.hours >= 2:
        early, late = r.memoryAt(2), r.memoryAt(c.hours)
        if late > early * (1 + MEMORY_MARGIN):
            out.append(f"traced memory grew: {early / 2**20:.2f} MiB at hour 2, "
                       f"{late / 2**20:.2f} MiB at hour {c.hours}")
    return out


def describe(r: SimResult) -> str:
    c = r.config
    lines = [
        f"simulated {c.hours} h: 1 server, {c.connections} client nodes; ping interval "
        f"{c.pingInterval:g} s (server), {c.clientPingInterval:g} s (clients), pong timeout "
        f"{c.pongTimeout:g} s; a message every {c.gap[0]:g}-{c.gap[1]:g} s per client; "
        f"link delays 0-{c.maxDelay:g} s",
        f"  messages sent {r.sent}, echoed {r.echoed}, missing {r.missing}, "
        f"duplicated {r.duplicates}, out of order {r.gaps}",
        f"  disconnects: clients {len(r.clientDisconnects)}, server "
        f"{len(r.serverDisconnects)}; server peers at the end {r.serverPeers}",
        f"  keep-alive: {r.keepAlive.pongs} Pongs accepted, {r.keepAlive.pings} Pings "
        f"arrived, {r.keepAlive.floods} floods",
    ]
    if r.memory and any(m for _, m in r.memory):
        lines.append("  traced memory (hour: MiB): " + ", ".join(
            f"{h}: {m / 2**20:.2f}" for h, m in r.memory))
        lines.append(f"  hour 2 {r.memoryAt(2) / 2**20:.3f} MiB -> hour {c.hours} "
                     f"{r.memoryAt(c.hours) / 2**20:.3f} MiB "
                     f"({(r.memoryAt(c.hours) / max(r.memoryAt(2), 1) - 1):+.2%}; allowed "
                     f"+{MEMORY_MARGIN:.0%})")
    lines += [f"  FAILED: {f}" for f in check(r)]
    lines.append(f"  ({r.seconds:.1f} s of real time)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.simulate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--ping-interval", type=float, default=60.0)
    parser.add_argument("--client-ping-interval", type=float, default=60.0)
    parser.add_argument("--message-gap", default="60,540", metavar="MIN,MAX")
    parser.add_argument("--max-delay", type=float, default=2.0)
    parser.add_argument("--no-tracemalloc", action="store_true")
    args = parser.parse_args(argv)
    lo, hi = (float(x) for x in args.message_gap.split(","))
    config = Config(args.connections, args.hours, args.ping_interval,
                    args.client_ping_interval, gap=(lo, hi), maxDelay=args.max_delay,
                    tracemalloc=not args.no_tracemalloc)
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([], redirectStandardIO=False)
    r = simulate(config, progress=lambda text: print(text, flush=True))
    print(describe(r))
    return 1 if check(r) else 0


if __name__ == "__main__":
    sys.exit(main())
