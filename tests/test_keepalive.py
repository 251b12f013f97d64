"""
Keep-alive (WIRE.md section 6): the pure timing policy L{KeepAlive}, then the
Twisted layer on one C{task.Clock} over an in-memory link whose every write
arrives after a chosen (or random) delay, in order.  No sockets, no real time.

Each test says which rule it checks; the far end is either another node or
a sans-IO L{Initiator} driven by hand, so that the test decides exactly when
each Ping and Pong is sent.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.wrappers_pb2 import StringValue
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from botd2 import errors
from botd2.botd2_pb2 import Envelope, Ping, Pong
from botd2.connection import (
    ErrorReceived,
    Event,
    Initiator,
    NotReady,
    PingReceived,
    PongReceived,
)
from botd2.frames import CipherState
from botd2.keepalive import DEFAULT_INTERVAL, DEFAULT_PONG_TIMEOUT, MIN_PING_GAP, KeepAlive
from botd2.keys import PrivateKey
from botd2.messages import parse_envelope
from botd2.protocol import CLOSE_GRACE, BOTD2Protocol, PeerFactory, _monotonic
from tests.support import Recorder, address, app, node

A_SEED, B_SEED = 0xA11CE, 0xB0B
DAY = 24 * 3600.0


# Driving the Clock ---------------------------------------------------------------


class GuardedClock(Clock):
    """
    A C{task.Clock} that fails, instead of hanging, when timers keep
    rescheduling themselves at one instant (a livelock would otherwise spin
    inside C{Clock.advance} for ever).
    """

    LIMIT = 10_000

    def __init__(self) -> None:
        super().__init__()
        self._instant = -1.0
        self._calls = 0

    def callLater(self, delay: float, f: Callable[..., object], *args: object, **kw: object) -> Any:
        now = self.seconds()
        if now != self._instant:
            self._instant, self._calls = now, 0
        self._calls += 1
        if self._calls > self.LIMIT:
            raise AssertionError(f"{self.LIMIT} timers set at t={now}: a livelock")
        return super().callLater(delay, f, *args, **kw)


def runUntil(clock: Clock, end: float) -> None:
    """
    Advance C{clock} to C{end}, stopping at every scheduled call on the way so
    that each runs at its own time (C{clock.seconds()} inside it is exactly
    the time it was due): keep-alive decisions then see exact times, not
    times rounded up to a step.
    """
    while True:
        due = min((call.getTime() for call in clock.getDelayedCalls()), default=None)
        if due is None or due > end:
            clock.advance(max(0.0, end - clock.seconds()))
            return
        clock.advance(max(0.0, due - clock.seconds()))


# An in-memory TCP connection with delays ------------------------------------------

#: What travels on one direction of a link: bytes, or the close of that side.
_FIN = "FIN"
_RST = "RST"


class LinkEnd:
    """
    One side's transport on a L{DelayedLink}: what C{BOTD2Protocol} (or a
    plain protocol) writes here reaches the other end's protocol after the
    link's delay, in order (TCP is ordered: a write never overtakes an
    earlier one), through C{clock.callLater}.

    @ivar written: every chunk the protocol wrote, delivered or not.
    @ivar writesBeforeClose: C{len(written)} when the protocol first asked to
        close, to check what went before the close.
    @ivar closeRequestedAt: when the protocol first called C{loseConnection}
        or C{abortConnection}.
    @ivar lastReceivedAt: when data was last delivered to this end.
    @ivar blackholed: writes from this end (data and closes) go nowhere.
    @ivar lost: C{connectionLost} was delivered to this end's protocol.
    """

    def __init__(
        self, link: DelayedLink, protocol: Protocol, host: IPv4Address, peer: IPv4Address
    ) -> None:
        self.link = link
        self.protocol = protocol
        self.other: LinkEnd = self
        self.hostAddress = host
        self.peerAddress = peer
        self.written: list[bytes] = []
        self.writesBeforeClose: int | None = None
        self.closeRequestedAt: float | None = None
        self.lastReceivedAt: float | None = None
        self.blackholed = False
        self.lost = False
        self.disconnecting = False
        self.paused = False
        self.producer: IPushProducer | None = None
        self._inFlight: deque[bytes | str] = deque()  # towards the other end, in order
        self._arrived = 0  # how many of _inFlight are due but held (the other end paused)
        self._lastDue = 0.0

    # ITransport -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.disconnecting or self.lost:
            return
        self.written.append(bytes(data))
        self._send(bytes(data))

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """An orderly close: the FIN follows the data written before it."""
        if self.disconnecting or self.lost:
            return
        self._closeRequested()
        self._send(_FIN)

    def abortConnection(self) -> None:
        """A reset: this end is lost at once; the peer hears of it after the delay."""
        if self.lost:
            return
        self._closeRequested()
        self._send(_RST)
        self.link.clock.callLater(0, self._lose, ConnectionAborted())

    def getPeer(self) -> IPv4Address:
        return self.peerAddress

    def getHost(self) -> IPv4Address:
        return self.hostAddress

    # IConsumer / IPushProducer ------------------------------------------------------

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        """Stop reading: what arrives meanwhile is held, in order."""
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.other._deliver()

    def stopProducing(self) -> None:
        self.abortConnection()

    # The wire ---------------------------------------------------------------------

    def _closeRequested(self) -> None:
        self.disconnecting = True
        if self.closeRequestedAt is None:
            self.closeRequestedAt = self.link.clock.seconds()
            self.writesBeforeClose = len(self.written)

    def _send(self, item: bytes | str) -> None:
        if self.blackholed:
            return
        clock = self.link.clock
        now = clock.seconds()
        due = max(now + self.link.delay(), self._lastDue)
        self._lastDue = due
        self._inFlight.append(item)
        clock.callLater(due - now, self._due)

    def _due(self) -> None:
        # Each call delivers the oldest item in flight, whatever float rounding
        # did to the call times: order is kept by the deque, not the Clock.
        self._arrived += 1
        self._deliver()

    def _deliver(self) -> None:
        other = self.other
        while self._arrived and not other.paused:
            self._arrived -= 1
            item = self._inFlight.popleft()
            if other.lost:
                continue
            if item == _FIN:
                other._lose(ConnectionDone())
                self._lose(ConnectionDone())
            elif item == _RST:
                other._lose(ConnectionLost("connection reset by peer"))
            else:
                assert isinstance(item, bytes)
                other.lastReceivedAt = self.link.clock.seconds()
                other.protocol.dataReceived(item)

    def _lose(self, reason: Exception) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(reason))


class DelayedLink:
    """
    Two protocols joined in memory on one Clock; each write arrives after
    C{delay()} seconds, but never before an earlier write in its direction.
    """

    def __init__(
        self,
        clock: Clock,
        client: Protocol,
        server: Protocol,
        delay: Callable[[], float] = lambda: 0.0,
        clientAddress: IPv4Address | None = None,
    ) -> None:
        self.clock = clock
        self.delay = delay
        clientAddress = clientAddress or address()
        serverAddress = address()
        self.client = LinkEnd(self, client, clientAddress, serverAddress)
        self.server = LinkEnd(self, server, serverAddress, clientAddress)
        self.client.other, self.server.other = self.server, self.client
        server.makeConnection(self.server)
        client.makeConnection(self.client)

    def cut(self) -> None:
        """From now on nothing more goes either way (a peer gone silent)."""
        self.client.blackholed = self.server.blackholed = True


def linkToNode(
    clock: Clock, client: Protocol, server: PeerFactory, delay: Callable[[], float]
) -> DelayedLink:
    """Join C{client} to a new inbound connection of the node C{server}."""
    clientAddress = address()
    proto = server.buildProtocol(clientAddress)
    assert proto is not None, "refused by admission"
    return DelayedLink(clock, client, proto, delay, clientAddress)


def linkNodes(
    clock: Clock, client: PeerFactory, server: PeerFactory, delay: Callable[[], float]
) -> DelayedLink:
    """Node C{client} dials node C{server} over a L{DelayedLink}."""
    return linkToNode(clock, client.buildInitiator(server.identity.public_key), server, delay)


def botd(end: LinkEnd) -> BOTD2Protocol:
    assert isinstance(end.protocol, BOTD2Protocol)
    return end.protocol


def envelopesWritten(end: LinkEnd, upTo: int | None = None) -> list[Envelope]:
    """
    Decrypt what a node wrote (its first C{upTo} writes), with a copy of its
    send key: the handshake frame in plaintext, then every transport frame.
    """
    proto = botd(end)
    keys = proto.sessionKeys  # type: ignore[attr-defined]  # tests.support.rememberKeys
    data = b"".join(end.written[:upTo])
    length = int.from_bytes(data[:4], "big")
    data = data[4 + length :]  # the Init or the Ack
    cipher = CipherState(keys.k_ir if proto.initiator else keys.k_ri)
    out = []
    while data:
        length = int.from_bytes(data[:4], "big")
        out.append(parse_envelope(cipher.open(data[:4], data[4 : 4 + length])))
        data = data[4 + length :]
    return out


# The far ends --------------------------------------------------------------------


class Chatter(Recorder):
    """Sends a numbered C{StringValue} every 1 to 12 random seconds while connected."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []
        self._next: Any = None

    def peerAuthenticated(self) -> None:
        super().peerAuthenticated()
        assert self.factory is not None
        self._clock: Any = self.factory.clock
        self._rng = random.Random(f"chatter {self.factory.nodeID}")
        self._schedule()

    def _schedule(self) -> None:
        self._next = self._clock.callLater(self._rng.uniform(1.0, 12.0), self._send)

    def _send(self) -> None:
        text = f"{self.peer.nodeID[:6]}:{len(self.sent)}"
        self.sendMessage(StringValue(value=text))
        self.sent.append(text)
        self._schedule()

    def stop(self) -> None:
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None

    def peerDisconnected(self, reason: Failure) -> None:
        super().peerDisconnected(reason)
        self.stop()


def chatter(proto: BOTD2Protocol) -> Chatter:
    assert isinstance(proto.app, Chatter)
    return proto.app


class SansIOPeer(Protocol):
    """
    The far end of a node as a sans-IO L{Initiator}: it sends a Ping or a Pong
    only when the test says so (or answers Pings at once with C{autoPong}),
    and logs every event with its time.
    """

    def __init__(self, connection: Initiator, clock: Clock, autoPong: bool = False) -> None:
        self.connection = connection
        self.clock = clock
        self.autoPong = autoPong
        self.log: list[tuple[float, Event | str]] = []

    def connectionMade(self) -> None:
        self.connection.initiate()
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        for event in self.connection.receive_data(data):
            self.log.append((self.clock.seconds(), event))
            if self.autoPong and isinstance(event, PingReceived) and not self.connection.closed:
                self.connection.send_pong(event.ping_id)
        self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.log.append((self.clock.seconds(), "closed"))

    def sendPing(self, pingID: str | None = None) -> str:
        pingID = self.connection.send_ping(pingID)
        self._flush()
        return pingID

    def sendPong(self, pingID: str) -> None:
        self.connection.send_pong(pingID)
        self._flush()

    def sendEnvelope(self, envelope: Envelope) -> None:
        self.connection.send_envelope(envelope)
        self._flush()

    def events(self, kind: type[Event]) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in self.log if isinstance(e, kind)]

    def kinds(self) -> list[str]:
        """The log as names, e.g. C{["HandshakeComplete", "ErrorReceived", "closed"]}."""
        return [e if isinstance(e, str) else type(e).__name__ for _, e in self.log]

    def _flush(self) -> None:
        data = self.connection.data_to_send()
        if data:
            assert self.transport is not None
            self.transport.write(data)


class KeepAliveLog:
    """Counts, per L{KeepAlive} object, the Pongs it accepted and the Pings that arrived."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.pongs: Counter[KeepAlive] = Counter()
        self.pings: Counter[KeepAlive] = Counter()
        self.floods: Counter[KeepAlive] = Counter()
        pongReceived, pingArrived = KeepAlive.pongReceived, KeepAlive.pingArrived

        def countPong(ka: KeepAlive, pingID: str, now: float) -> bool:
            accepted = pongReceived(ka, pingID, now)
            self.pongs[ka] += accepted
            return accepted

        def countPing(ka: KeepAlive, now: float) -> bool:
            accepted = pingArrived(ka, now)
            self.pings[ka] += 1
            self.floods[ka] += not accepted
            return accepted

        case.patch(KeepAlive, "pongReceived", countPong)
        case.patch(KeepAlive, "pingArrived", countPing)


# 1. The timing policy, pure -------------------------------------------------------


class KeepAlivePolicyTests(SynchronousTestCase):
    """L{KeepAlive} alone: times in, decisions out."""

    def test_first_ping_one_interval_after_start(self) -> None:
        """Nothing is due before the handshake; then the first Ping one interval after it."""
        ka = KeepAlive()
        self.assertIsNone(ka.nextDeadline())
        self.assertFalse(ka.pingDue(1e9))
        ka.start(1000.0)
        self.assertEqual(ka.nextDeadline(), 1000.0 + DEFAULT_INTERVAL)
        self.assertFalse(ka.pingDue(1059.99))
        self.assertTrue(ka.pingDue(1060.0))

    def test_first_ping_configured_interval(self) -> None:
        ka = KeepAlive(45.0, 10.0)
        ka.start(0.0)
        self.assertFalse(ka.pingDue(44.99))
        self.assertTrue(ka.pingDue(45.0))

    def test_next_ping_interval_after_previous(self) -> None:
        """A prompt Pong: the next Ping goes at previous Ping + interval."""
        ka = KeepAlive()
        ka.start(0.0)
        ka.pingSent("p1", 60.0)
        self.assertTrue(ka.pongReceived("p1", 62.5))
        # max(60 + 60, 62.5 + 30) = 120
        self.assertEqual(ka.nextPingAt, 120.0)
        self.assertEqual(ka.nextDeadline(), 120.0)
        self.assertFalse(ka.pingDue(119.99))
        self.assertTrue(ka.pingDue(120.0))

    def test_next_ping_30s_after_late_pong(self) -> None:
        """A late Pong: the next Ping goes 30 s after it, later than Ping + interval."""
        ka = KeepAlive(30.0, 50.0)
        ka.start(0.0)
        ka.pingSent("p1", 30.0)
        self.assertTrue(ka.pongReceived("p1", 45.0))
        # max(30 + 30, 45 + 30) = 75
        self.assertEqual(ka.nextDeadline(), 75.0)
        self.assertFalse(ka.pingDue(74.99))
        self.assertTrue(ka.pingDue(75.0))

        ka = KeepAlive(60.0, 45.0)
        ka.start(0.0)
        ka.pingSent("p1", 60.0)
        self.assertTrue(ka.pongReceived("p1", 100.0))
        # max(60 + 60, 100 + 30) = 130
        self.assertEqual(ka.nextDeadline(), 130.0)
        self.assertFalse(ka.pingDue(129.99))

    def test_at_most_one_outstanding(self) -> None:
        """While a Ping waits for its Pong no other is due or allowed, however late."""
        ka = KeepAlive(30.0, 100.0)
        ka.start(0.0)
        ka.pingSent("p1", 30.0)
        self.assertEqual(ka.outstanding, "p1")
        for now in (60.0, 90.0, 129.0):
            self.assertFalse(ka.pingDue(now))
            self.assertFalse(ka.mayPingNow(now))
        self.assertRaises(ValueError, ka.pingSent, "p2", 129.0)
        self.assertEqual((ka.outstanding, ka.sentAt), ("p1", 30.0))
        # what the node waits for now is the Pong deadline
        self.assertEqual(ka.nextDeadline(), 130.0)

    def test_pong_timeout(self) -> None:
        """The Pong is overdue exactly the pong timeout after the Ping, not before."""
        ka = KeepAlive()
        ka.start(0.0)
        ka.pingSent("p1", 60.0)
        self.assertEqual(ka.nextDeadline(), 60.0 + DEFAULT_PONG_TIMEOUT)
        self.assertFalse(ka.pongOverdue(89.99))
        self.assertTrue(ka.pongOverdue(90.0))

        ka = KeepAlive(45.0, 10.0)
        ka.start(0.0)
        self.assertFalse(ka.pongOverdue(1e9))  # no Ping out: nothing overdue
        ka.pingSent("p1", 45.0)
        self.assertFalse(ka.pongOverdue(54.99))
        self.assertTrue(ka.pongOverdue(55.0))
        self.assertTrue(ka.pongReceived("p1", 54.0))
        self.assertFalse(ka.pongOverdue(1e9))

    def test_settings_refused(self) -> None:
        """An interval under 30 s, or a pong timeout not above 0, is refused (NaN too)."""
        for interval in (29.999, 0.0, -60.0, math.nan):
            self.assertRaises(ValueError, KeepAlive, interval)
        for timeout in (0.0, -1.0, math.nan):
            self.assertRaises(ValueError, KeepAlive, 60.0, timeout)
        KeepAlive(MIN_PING_GAP, 0.001)  # the limits themselves are fine
        key = PrivateKey.from_int(A_SEED)
        self.assertRaises(ValueError, PeerFactory, key, clock=Clock(), pingInterval=29.0)
        self.assertRaises(ValueError, PeerFactory, key, clock=Clock(), pongTimeout=0.0)

    def test_may_ping_now(self) -> None:
        """On demand: none outstanding and at least 30 s since the last Pong."""
        ka = KeepAlive()
        ka.start(0.0)
        self.assertTrue(ka.mayPingNow(0.0))  # right after the handshake
        ka.pingSent("p1", 5.0)
        self.assertFalse(ka.mayPingNow(6.0))
        self.assertTrue(ka.pongReceived("p1", 7.5))
        self.assertFalse(ka.mayPingNow(7.5))
        self.assertFalse(ka.mayPingNow(37.49))
        self.assertTrue(ka.mayPingNow(37.5))
        ka.pingSent("p2", 37.5)
        self.assertEqual(ka.outstanding, "p2")

    def test_unknown_pong_changes_nothing(self) -> None:
        """A Pong for no outstanding Ping returns False and leaves every field alone."""
        ka = KeepAlive()
        ka.start(0.0)
        before = {name: getattr(ka, name) for name in KeepAlive.__slots__}
        self.assertFalse(ka.pongReceived("p0", 10.0))  # nothing outstanding
        self.assertEqual({name: getattr(ka, name) for name in KeepAlive.__slots__}, before)
        ka.pingSent("p1", 60.0)
        before = {name: getattr(ka, name) for name in KeepAlive.__slots__}
        for wrong in ("p2", "", "P1", "p1 "):
            self.assertFalse(ka.pongReceived(wrong, 70.0))
            self.assertEqual({name: getattr(ka, name) for name in KeepAlive.__slots__}, before)
        self.assertTrue(ka.pongReceived("p1", 71.0))
        before = {name: getattr(ka, name) for name in KeepAlive.__slots__}
        self.assertFalse(ka.pongReceived("p1", 72.0))  # a duplicate is unknown now
        self.assertEqual({name: getattr(ka, name) for name in KeepAlive.__slots__}, before)

    def test_ping_flood_rule(self) -> None:
        """A Ping under 30 s after the previous one is a flood; exactly 30 s is not."""
        ka = KeepAlive()
        self.assertTrue(ka.pingArrived(100.0))  # the first ever
        self.assertTrue(ka.pingArrived(130.0))  # exactly 30 s later
        self.assertFalse(ka.pingArrived(159.9))  # counted from the previous, not the first
        for gap in (29.999, 0.0):
            ka = KeepAlive()
            ka.pingArrived(100.0)
            self.assertFalse(ka.pingArrived(100.0 + gap), gap)


# 2. A day between two nodes ----------------------------------------------------------


class DelayedLinkTests(SynchronousTestCase):
    """The harness itself: delays, order, pausing, closing."""

    def test_order_kept_under_random_delays(self) -> None:
        clock = GuardedClock()
        rng = random.Random(7)
        got: list[tuple[float, bytes]] = []

        class Sink(Protocol):
            def dataReceived(self, data: bytes) -> None:
                got.append((clock.seconds(), data))

        sink = Sink()
        link = DelayedLink(clock, Protocol(), sink, lambda: rng.uniform(0.0, 10.0))
        sentAt = {}
        for n in range(300):
            runUntil(clock, n * 0.7)
            data = str(n).encode()
            sentAt[data] = clock.seconds()
            link.client.write(data)
        runUntil(clock, 1000.0)
        self.assertEqual([d for _, d in got], [str(n).encode() for n in range(300)])
        for t, data in got:
            self.assertTrue(sentAt[data] <= t <= sentAt[data] + 10.0)
        self.assertTrue(any(t > sentAt[data] + 1.0 for t, data in got))

        link.server.pauseProducing()
        link.client.write(b"held")
        runUntil(clock, 1100.0)
        self.assertEqual(got[-1][1], b"299")
        link.server.resumeProducing()
        self.assertEqual(got[-1], (1100.0, b"held"))
        link.client.loseConnection()
        runUntil(clock, 1200.0)
        self.assertTrue(link.client.lost and link.server.lost)


class ADayOfTrafficTests(SynchronousTestCase):
    """
    Two conforming nodes, each write delayed 0 to 10 random seconds, both
    sending application messages: a day without a single disconnect.
    """

    def day(self, seed: int, interval: float) -> None:
        clock = GuardedClock()
        rng = random.Random(seed)
        # The handshake runs under the same random delays: Init, Ack and the
        # key confirmation may take up to 30 s in all, past the default 10 s
        # handshake timeout, so it is raised to 60 s for this test.
        settings: dict[str, Any] = {
            "protocol": Chatter,
            "handshakeTimeout": 60.0,
            "pingInterval": interval,
        }
        a = node(A_SEED, clock, **settings)
        b = node(B_SEED, clock, **settings)
        log = KeepAliveLog(self)
        link = linkNodes(clock, a, b, lambda: rng.uniform(0.0, 10.0))
        runUntil(clock, DAY)
        client, server = botd(link.client), botd(link.server)
        assert client.keepalive is not None and server.keepalive is not None
        pongs = [log.pongs[client.keepalive], log.pongs[server.keepalive]]
        pings = [log.pings[client.keepalive], log.pings[server.keepalive]]
        for proto in (client, server):
            chatter(proto).stop()
        runUntil(clock, DAY + 30.0)  # what is in flight lands

        for proto, end in ((client, link.client), (server, link.server)):
            self.assertEqual(app(proto).authenticated, 1)
            self.assertEqual(app(proto).lost, [])
            self.assertFalse(proto.disconnecting)
            self.assertIsNone(end.closeRequestedAt)
        self.assertIs(a.peers[b.identity.public_key], client)
        self.assertIs(b.peers[a.identity.public_key], server)

        # Every message arrived once, in order.
        for sender, receiver in ((client, server), (server, client)):
            sent = chatter(sender).sent
            self.assertGreater(len(sent), 8_000)
            self.assertEqual(app(receiver).texts(), sent)

        # Keep-alive ran all day on both sides: a Ping every interval, or 30 s
        # after a Pong that took up to 20 s, so between these bounds.
        period = max(interval, MIN_PING_GAP + 20.0)
        for n in pongs + pings:
            self.assertGreaterEqual(n, (DAY - 60.0) / period - 2, (pongs, pings))
            self.assertLessEqual(n, DAY / interval + 1, (pongs, pings))
        self.assertEqual(sum(log.floods.values()), 0)

    def test_default_interval(self) -> None:
        self.day(0xDA1, DEFAULT_INTERVAL)

    def test_shortest_interval(self) -> None:
        """
        At the 30 s minimum each Ping leaves 30 s after the previous Pong, the
        tightest case of "never trip each other's flood check whatever the
        delays" (WIRE.md section 6).
        """
        self.day(0xDA2, MIN_PING_GAP)


# 3. A silent peer is dropped --------------------------------------------------------


class SilentPeerTests(SynchronousTestCase):
    """A peer that stops answering is dropped within interval + pong timeout."""

    def dropped(
        self, cutAt: float, clientSettings: dict[str, float], serverSettings: dict[str, float]
    ) -> None:
        clock = GuardedClock()
        rng = random.Random(cutAt)
        a = node(A_SEED, clock, **clientSettings)
        b = node(B_SEED, clock, **serverSettings)
        link = linkNodes(clock, a, b, lambda: rng.uniform(0.0, 3.0))
        runUntil(clock, cutAt)
        for end in (link.client, link.server):
            self.assertTrue(botd(end).authenticated)
            self.assertIsNone(end.closeRequestedAt)
        link.cut()
        runUntil(clock, cutAt + 300.0)

        for end, settings in ((link.client, clientSettings), (link.server, serverSettings)):
            proto = botd(end)
            interval = settings.get("pingInterval", DEFAULT_INTERVAL)
            timeout = settings.get("pongTimeout", DEFAULT_PONG_TIMEOUT)
            closedAt, heardAt = end.closeRequestedAt, end.lastReceivedAt
            assert closedAt is not None and heardAt is not None, (cutAt, settings)
            self.assertLessEqual(heardAt, cutAt + 3.0)
            self.assertLessEqual(closedAt - heardAt, interval + timeout, (cutAt, settings))
            # ... and not before the pong timeout of its last Ping ran out.
            ka = proto.keepalive
            assert ka is not None and ka.sentAt is not None
            self.assertAlmostEqual(closedAt, ka.sentAt + timeout, places=6)
            [reason] = app(proto).lost
            self.assertTrue(reason.check(errors.KeepAliveTimeout), reason)
            # It sent an Error (into the void) before closing, after its Ping.
            assert end.writesBeforeClose is not None
            sent = envelopesWritten(end, end.writesBeforeClose)
            self.assertEqual(sent[-1].WhichOneof("body"), "error")
            self.assertEqual(sent[-2].ping.id, ka.outstanding)

    def test_default_settings(self) -> None:
        """60 s interval + 30 s pong timeout: closed within 90 s, at any phase of the cut."""
        rng = random.Random(3)
        for cutAt in [300.0, *(rng.uniform(200.0, 400.0) for _ in range(5))]:
            self.dropped(cutAt, {}, {})

    def test_configured_settings(self) -> None:
        """Each node by its own settings: 45/10 on one side, the defaults on the other."""
        rng = random.Random(4)
        short = {"pingInterval": 45.0, "pongTimeout": 10.0}
        for cutAt in [300.0, *(rng.uniform(200.0, 400.0) for _ in range(5))]:
            self.dropped(cutAt, short, {})
            self.dropped(cutAt, {}, short)

    def test_error_reaches_a_peer_that_still_reads(self) -> None:
        """
        Only the server's writes are lost: the client times out, and its
        Error reaches the server, which closes as told (C{PeerError}).  The
        server's own Pings are lost too, so its timeout is made longer than
        the client's, or it could time out first.
        """
        clock = GuardedClock()
        b = node(B_SEED, clock, pingInterval=120.0, pongTimeout=60.0)
        link = linkNodes(clock, node(A_SEED, clock), b, lambda: 1.0)
        runUntil(clock, 100.0)
        link.server.blackholed = True
        runUntil(clock, 400.0)
        client, server = botd(link.client), botd(link.server)
        self.assertTrue(app(client).lost[0].check(errors.KeepAliveTimeout))
        assert link.client.closeRequestedAt is not None and link.client.lastReceivedAt
        self.assertLessEqual(
            link.client.closeRequestedAt - link.client.lastReceivedAt,
            DEFAULT_INTERVAL + DEFAULT_PONG_TIMEOUT,
        )
        self.assertTrue(app(server).lost[0].check(errors.PeerError), app(server).lost)


# 4 and 5. A node against a hand-driven peer ------------------------------------------


def nodeWithPeer(
    delay: float = 0.0, autoPong: bool = True, **settings: Any
) -> tuple[Clock, BOTD2Protocol, SansIOPeer, DelayedLink]:
    """
    A node (the responder) and a sans-IO peer dialling it, handshake done
    at time 0 when C{delay} is 0.
    """
    clock = GuardedClock()
    factory = node(B_SEED, clock, **settings)
    initiator = Initiator(PrivateKey.from_int(A_SEED), factory.identity.public_key)
    peer = SansIOPeer(initiator, clock, autoPong)
    link = linkToNode(clock, peer, factory, lambda: delay)
    runUntil(clock, 3 * delay)
    proto = botd(link.server)
    assert proto.authenticated and initiator.handshake_complete
    return clock, proto, peer, link


class PingFloodTests(SynchronousTestCase):
    """A Ping under 30 s after the previous one: Error, then close."""

    def assertFlood(self, pingTimes: list[float]) -> None:
        """Pings at C{pingTimes}; the last is the flood, all before it are answered."""
        clock, proto, peer, link = nodeWithPeer()
        ids = []
        for t in pingTimes:
            runUntil(clock, t)
            ids.append(peer.sendPing())
        runUntil(clock, pingTimes[-1] + 100.0)
        pongs = [e.ping_id for _, e in peer.events(PongReceived)]
        self.assertEqual(pongs, ids[:-1])
        # The Error arrives, then the close; nothing after the flood but these.
        self.assertEqual(peer.kinds()[-2:], ["ErrorReceived", "closed"])
        [(errorAt, _)] = peer.events(ErrorReceived)
        self.assertEqual(errorAt, pingTimes[-1])
        self.assertEqual(link.server.closeRequestedAt, pingTimes[-1])
        [reason] = app(proto).lost
        self.assertTrue(reason.check(errors.ProtocolViolation), reason)
        self.assertEqual(reason.value.code, "ping_flood")

    def test_second_ping_29_9s_later(self) -> None:
        self.assertFlood([100.0, 129.9])

    def test_counted_from_the_previous_ping(self) -> None:
        self.assertFlood([100.0, 130.0, 159.9])

    def test_two_pings_at_once(self) -> None:
        self.assertFlood([100.0, 100.0])

    def test_exactly_30s_later_is_answered(self) -> None:
        """Pings 30 s apart each get a Pong at once, with a fresh id and the Ping's id."""
        clock, proto, peer, link = nodeWithPeer()
        sent = []
        for t in (100.0, 130.0, 160.0):
            runUntil(clock, t)
            sent.append((t, peer.sendPing()))
        runUntil(clock, 200.0)
        got = [(t, e.ping_id) for t, e in peer.events(PongReceived)]
        self.assertEqual(got, sent)
        pongIDs = [e.pong_id for _, e in peer.events(PongReceived)]
        self.assertEqual(len(set(pongIDs) | {i for _, i in sent}), 6)
        for pongID in pongIDs:
            self.assertRegex(pongID, r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-")
        self.assertEqual(app(proto).lost, [])
        self.assertIsNone(link.server.closeRequestedAt)


class UnknownPongTests(SynchronousTestCase):
    """A Pong for no outstanding Ping is ignored: no close, and it answers nothing."""

    def test_ignored_and_still_times_out(self) -> None:
        clock, proto, peer, link = nodeWithPeer(autoPong=False)
        runUntil(clock, 10.0)
        peer.sendPong("no-ping-yet")  # none outstanding
        runUntil(clock, 60.0)
        [(pingAt, ping)] = peer.events(PingReceived)
        self.assertEqual(pingAt, 60.0)  # the first Ping one interval after the handshake
        runUntil(clock, 61.0)
        peer.sendPong(ping.ping_id + "-not")
        runUntil(clock, 89.9)
        self.assertEqual(app(proto).lost, [])
        self.assertIsNone(link.server.closeRequestedAt)
        assert proto.keepalive is not None
        self.assertEqual(proto.keepalive.outstanding, ping.ping_id)
        runUntil(clock, 200.0)
        self.assertEqual(link.server.closeRequestedAt, 60.0 + DEFAULT_PONG_TIMEOUT)
        self.assertEqual(peer.kinds()[-2:], ["ErrorReceived", "closed"])
        [reason] = app(proto).lost
        self.assertTrue(reason.check(errors.KeepAliveTimeout), reason)

    def test_the_real_pong_still_counts(self) -> None:
        """The same, but the real Pong follows the unknown one: the node stays."""
        clock, proto, peer, link = nodeWithPeer(autoPong=False)
        runUntil(clock, 61.0)
        [(_, ping)] = peer.events(PingReceived)
        peer.sendPong(ping.ping_id + "-not")
        runUntil(clock, 80.0)
        peer.sendPong(ping.ping_id)
        runUntil(clock, 100.0)
        assert proto.keepalive is not None
        self.assertIsNone(proto.keepalive.outstanding)
        self.assertEqual(app(proto).lost, [])
        self.assertIsNone(link.server.closeRequestedAt)


class ScheduleTests(SynchronousTestCase):
    """When the node's own Pings go, seen from the peer (WIRE.md section 6, "Sending")."""

    def test_schedule(self) -> None:
        """
        Interval 40 s, pong timeout 50 s.  Ping 1 at 40 (one interval after the
        handshake); Pong after 5 s: Ping 2 at 40 + 40 = 80.  Pong held 45 s:
        no Ping while it is outstanding, though the interval runs out at 120;
        Ping 3 at 125 + 30 = 155.
        """
        clock, proto, peer, _ = nodeWithPeer(autoPong=False, pingInterval=40.0, pongTimeout=50.0)

        def pings() -> list[tuple[float, str]]:
            return [(t, e.ping_id) for t, e in peer.events(PingReceived)]

        runUntil(clock, 45.0)
        [(t1, id1)] = pings()
        self.assertEqual(t1, 40.0)
        peer.sendPong(id1)
        runUntil(clock, 124.9)
        [_, (t2, id2)] = pings()
        self.assertEqual(t2, 80.0)
        runUntil(clock, 125.0)
        peer.sendPong(id2)
        runUntil(clock, 200.0)
        self.assertEqual([t for t, _ in pings()], [40.0, 80.0, 155.0])
        self.assertEqual(app(proto).lost, [])


# 6. On demand ----------------------------------------------------------------------


class OnDemandTests(SynchronousTestCase):
    """C{PeerProtocol.ping()}: WIRE.md section 6, "On demand"."""

    def test_rtt_and_refusals(self) -> None:
        clock = GuardedClock()
        # 1.25 s each way: handshake complete at 2.5 (client) and 3.75 (server)
        link = linkNodes(clock, node(A_SEED, clock), node(B_SEED, clock), lambda: 1.25)
        runUntil(clock, 5.0)
        pinger = app(botd(link.client))
        self.failureResultOf(Recorder().ping(), NotReady)  # not connected

        d = pinger.ping()
        runUntil(clock, 6.0)
        self.assertNoResult(d)
        self.failureResultOf(pinger.ping(), NotReady)  # one is outstanding
        runUntil(clock, 7.5)
        self.assertEqual(self.successResultOf(d), 2.5)

        self.failureResultOf(pinger.ping(), NotReady)  # the Pong came just now
        runUntil(clock, 37.4)
        self.failureResultOf(pinger.ping(), NotReady)
        runUntil(clock, 37.5)  # 30 s after the Pong
        d = pinger.ping()
        runUntil(clock, 40.0)
        self.assertEqual(self.successResultOf(d), 2.5)
        for end in (link.client, link.server):
            self.assertEqual(app(botd(end)).lost, [])

    def test_waits_for_the_pong_timeout(self) -> None:
        """An unanswered on-demand Ping ends the connection after the pong timeout."""
        clock = GuardedClock()
        a = node(A_SEED, clock, pongTimeout=10.0)
        link = linkNodes(clock, a, node(B_SEED, clock), lambda: 0.0)
        runUntil(clock, 5.0)
        link.cut()
        d = app(botd(link.client)).ping()
        runUntil(clock, 14.9)
        self.assertNoResult(d)
        self.assertIsNone(link.client.closeRequestedAt)
        runUntil(clock, 15.0)
        self.assertEqual(link.client.closeRequestedAt, 15.0)
        runUntil(clock, 15.0 + CLOSE_GRACE)  # the silent peer never takes the close
        self.failureResultOf(d, errors.KeepAliveTimeout)


class InvalidPingIDTests(SynchronousTestCase):
    """A Ping id must be 1..64 bytes of UTF-8 (WIRE.md section 3); else a protocol error."""

    def pingWith(self, pingID: str) -> tuple[BOTD2Protocol, SansIOPeer, DelayedLink]:
        clock, proto, peer, link = nodeWithPeer()
        runUntil(clock, 10.0)
        peer.sendEnvelope(Envelope(ping=Ping(id=pingID)))
        runUntil(clock, 20.0)
        return proto, peer, link

    def test_invalid(self) -> None:
        # "é" is 2 bytes: 33 of them are 33 characters but 66 bytes
        for pingID in ("", "x" * 65, "é" * 33):
            proto, peer, link = self.pingWith(pingID)
            self.assertEqual(link.server.closeRequestedAt, 10.0, pingID)
            self.assertEqual(peer.events(PongReceived), [])
            self.assertEqual(peer.kinds()[-1], "closed")
            [reason] = app(proto).lost
            self.assertTrue(reason.check(errors.ProtocolViolation), reason)
            self.assertEqual(reason.value.code, "bad_id")

    def test_valid(self) -> None:
        for pingID in ("x", "x" * 64, "é" * 32, "not a uuid"):
            proto, peer, _ = self.pingWith(pingID)
            self.assertEqual([e.ping_id for _, e in peer.events(PongReceived)], [pingID])
            self.assertEqual(app(proto).lost, [])

    def test_invalid_gets_an_error(self) -> None:
        """
        WIRE.md section 5: a protocol error after the handshake SHOULD be told
        by an Error before the close.
        """
        for pingID in ("", "x" * 65, "é" * 33):
            _, peer, _ = self.pingWith(pingID)
            self.assertEqual(peer.kinds()[-2:], ["ErrorReceived", "closed"], pingID)

    def test_pong_with_invalid_id(self) -> None:
        """The same rule for a Pong's own id (its ping_id is only a reference)."""
        for pongID in ("", "x" * 65):
            clock, proto, peer, _ = nodeWithPeer()
            runUntil(clock, 10.0)
            peer.sendEnvelope(Envelope(pong=Pong(id=pongID, ping_id="whatever")))
            runUntil(clock, 20.0)
            [reason] = app(proto).lost
            self.assertEqual(reason.value.code, "bad_id")


# 7. A monotonic clock ---------------------------------------------------------------


class MonotonicTests(SynchronousTestCase):
    def test_monotonic(self) -> None:
        """
        Under the real reactor (whose C{seconds()} is wall-clock time) intervals
        are measured with C{time.monotonic}; under a test Clock, with the Clock.
        """
        from twisted.internet import reactor

        self.assertIs(_monotonic(reactor), time.monotonic)  # type: ignore[arg-type]
        key = PrivateKey.from_int(A_SEED)
        self.assertIs(PeerFactory(key)._now, time.monotonic)
        clock = GuardedClock()
        now = _monotonic(clock)
        self.assertEqual(now, clock.seconds)
        clock.advance(12.5)
        self.assertEqual(now(), 12.5)
        self.assertEqual(node(A_SEED, clock)._now(), 12.5)
