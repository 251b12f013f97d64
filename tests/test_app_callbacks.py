"""
What an application may do from its callbacks, and what the library owes
it then: closing from C{peerAuthenticated}, C{peerDisconnected} or a
C{ping()} callback, a producer registered when the node closes, several
C{connect()} callers of one dial, an C{allow} policy that raises, and a node
service that stops while connections are open.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.wrappers_pb2 import BytesValue, StringValue
from twisted.internet import abstract, defer, main, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from botd2 import errors
from botd2.keys import PrivateKey, PublicKey
from botd2.protocol import CLOSE_GRACE, BOTD2Protocol, NotReady, PeerFactory
from botd2.service import NodeService
from tests.support import Link, Recorder, address, app, dial, node

A_SEED, B_SEED = 0xA11CE, 0xB0B


class ClosesOnArrival(Recorder):
    """Closes every connection as soon as it is told of it."""

    def peerAuthenticated(self) -> None:
        super().peerAuthenticated()
        self.disconnect("not talking to you today")


class RaisesOnArrival(Recorder):
    def peerAuthenticated(self) -> None:
        raise ZeroDivisionError("a bug in the application")


class MemoryDial(SynchronousTestCase):
    """Node a dials node b with C{connectEndpoint}, on a memory reactor."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoint = TCP4ClientEndpoint(self.reactor, "10.0.0.2", 9945)

    def nodes(self, aProtocol: type[Recorder] = Recorder) -> tuple[PeerFactory, PeerFactory]:
        a = PeerFactory(PrivateKey.from_int(A_SEED), protocol=aProtocol, reactor=self.reactor)
        b = PeerFactory(PrivateKey.from_int(B_SEED), protocol=Recorder, reactor=self.reactor)
        return a, b

    def complete(self, b: PeerFactory, index: int = 0, flush: bool = True) -> Link:
        """Join a's index-th pending TCP connect to node b in memory."""
        host, port, factory, _, _ = self.reactor.tcpClients[index]
        client = factory.buildProtocol(IPv4Address("TCP", host, port))
        server = b.buildProtocol(address())
        assert server is not None
        link = Link(client, server, self.reactor, greet=flush)
        if flush:
            link.flush()
        else:
            link.pump.pump()
        return link


class CloseFromPeerAuthenticatedTests(MemoryDial):
    """
    An application that closes (or raises) in C{peerAuthenticated}: its
    C{connect()} fails at once, and a later C{connect()} dials again.
    """

    def check(self, protocol: type[Recorder]) -> None:
        a, b = self.nodes(protocol)
        d = a.connectEndpoint(self.endpoint, b.identity.public_key)
        self.complete(b)
        failure = self.failureResultOf(d, errors.ConnectFailed)
        self.assertIn("closed as soon as the handshake completed", str(failure.value))
        self.assertEqual(a._dials, {})
        a.connectEndpoint(self.endpoint, b.identity.public_key)
        self.assertEqual(len(self.reactor.tcpClients), 2, "the second connect did not dial")

    def test_disconnect(self) -> None:
        self.check(ClosesOnArrival)

    def test_exception(self) -> None:
        self.check(RaisesOnArrival)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class SimultaneousDialTests(MemoryDial):
    def test_connect_fires_with_the_kept_connection(self) -> None:
        """
        Both nodes dial at once; the connection dialled by the lower ID is
        kept (WIRE.md section 7).  The higher node's own dial completes
        second and is replaced: its C{connect()} fires with the kept one.
        """
        x, y = self.nodes()
        hi, lo = (x, y) if bytes(x.identity.public_key) > bytes(y.identity.public_key) else (y, x)
        d = hi.connectEndpoint(self.endpoint, lo.identity.public_key)
        dial(lo, hi)  # lo's dial completes first
        host, port, factory, _, _ = self.reactor.tcpClients[0]
        client = factory.buildProtocol(IPv4Address("TCP", host, port))
        server = lo.buildProtocol(address())
        assert server is not None
        Link(client, server, self.reactor).flush()  # then hi's own
        kept = hi.peers[lo.identity.public_key]
        self.assertFalse(kept.initiator)
        self.assertIs(self.successResultOf(d), kept.app)


class SharedDialTests(MemoryDial):
    """Callers of C{connect()} to one node share its dial, not their cancels."""

    def test_cancel_before_tcp(self) -> None:
        a, b = self.nodes()
        d1 = a.connectEndpoint(self.endpoint, b.identity.public_key)
        d2 = a.connectEndpoint(self.endpoint, b.identity.public_key)
        d1.cancel()
        self.failureResultOf(d1, defer.CancelledError)
        self.assertNoResult(d2)
        self.complete(b)
        self.assertEqual(self.successResultOf(d2).peer.node, b.identity.public_key)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_cancel_during_handshake(self) -> None:
        a, b = self.nodes()
        d1 = a.connectEndpoint(self.endpoint, b.identity.public_key)
        d2 = a.connectEndpoint(self.endpoint, b.identity.public_key)
        link = self.complete(b, flush=False)  # TCP up, Init sent, no Ack yet
        d1.cancel()
        self.failureResultOf(d1, defer.CancelledError)
        link.flush()
        self.assertEqual(self.successResultOf(d2).peer.node, b.identity.public_key)

    def test_all_cancel_stops_the_dial(self) -> None:
        a, b = self.nodes()
        d1 = a.connectEndpoint(self.endpoint, b.identity.public_key)
        d2 = a.connectEndpoint(self.endpoint, b.identity.public_key)
        link = self.complete(b, flush=False)
        d1.cancel()
        d2.cancel()
        self.failureResultOf(d1, defer.CancelledError)
        self.failureResultOf(d2, defer.CancelledError)
        # a new caller does not join the dying dial: it dials anew
        d3 = a.connectEndpoint(self.endpoint, b.identity.public_key)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        link.flush()  # the aborted connection goes; the new dial is untouched
        self.assertNoResult(d3)
        self.assertIn(b.identity.public_key, a._dials)
        self.complete(b, index=1)
        self.assertEqual(self.successResultOf(d3).peer.node, b.identity.public_key)


class DialFireTests(MemoryDial):
    """A caller's callback that cancels another caller of the same dial."""

    def test_race(self) -> None:
        """defer.race of two connects to one node (two addresses, say) fires."""
        a, b = self.nodes()
        d1 = a.connectEndpoint(self.endpoint, b.identity.public_key)
        d2 = a.connectEndpoint(self.endpoint, b.identity.public_key)
        raced = defer.race([d1, d2])
        self.complete(b)
        index, won = self.successResultOf(raced)
        self.assertEqual((index, won.peer.node), (0, b.identity.public_key))

    def test_cancel_other_from_callback(self) -> None:
        a, b = self.nodes()
        d1 = a.connectEndpoint(self.endpoint, b.identity.public_key)
        d2 = a.connectEndpoint(self.endpoint, b.identity.public_key)
        d1.addCallback(lambda peer: (d2.cancel(), peer)[1])
        self.complete(b)
        self.assertEqual(self.successResultOf(d1).peer.node, b.identity.public_key)
        self.failureResultOf(d2, defer.CancelledError)


class CleansUp(Recorder):
    """Closes its connection from peerDisconnected, as a 'close all' helper would."""

    def peerDisconnected(self, reason: Any) -> None:
        super().peerDisconnected(reason)
        self.disconnect("cleanup")


class RaisesOnLoss(Recorder):
    def peerDisconnected(self, reason: Any) -> None:
        super().peerDisconnected(reason)
        raise KeyError("a bug in the application's cleanup")


class AfterTheEndTests(SynchronousTestCase):
    """Calls on a connection that is gone change nothing and leave no timer."""

    def closedByPeer(self, protocol: type[Recorder]) -> tuple[Clock, BOTD2Protocol]:
        clock = Clock()
        a, b = node(A_SEED, clock, protocol=protocol), node(B_SEED, clock)
        link = dial(a, b)
        link.serverIO.loseConnection()
        link.flush()
        self.assertTrue(link.client._lostCalled)
        return clock, link.client

    def check(self, protocol: type[Recorder]) -> None:
        clock, client = self.closedByPeer(protocol)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIsInstance(self.successResultOf(client.whenLost()), errors.ClosedByPeer)
        self.assertIsInstance(app(client).lost[0].value, errors.ClosedByPeer)

    def test_disconnect_from_peerDisconnected(self) -> None:
        self.check(CleansUp)

    def test_exception_in_peerDisconnected(self) -> None:
        self.check(RaisesOnLoss)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_ping(self) -> None:
        """ping() on a connection the peer closed: a failed Deferred, not an exception."""
        _, client = self.closedByPeer(Recorder)
        self.failureResultOf(app(client).ping(), NotReady)


class CloseFromPingCallbackTests(SynchronousTestCase):
    def test_close_grace_kept(self) -> None:
        """
        disconnect() from a ping() callback: the close grace still aborts a
        peer that stops reading (keep-alive does not replace its timer).
        """
        clock = Clock()
        a, b = node(A_SEED, clock), node(B_SEED, clock)
        link = dial(a, b)
        client, server = link.client, link.server
        # from here on the bytes are carried by hand
        tc, ts = StringTransport(), StringTransport()
        client.transport, server.transport = tc, ts
        d = app(client).ping()
        d.addCallback(lambda _: app(client).disconnect("measured, bye"))
        clock.advance(0)  # the Ping is written
        server.dataReceived(tc.value())
        tc.clear()
        client.dataReceived(ts.value())  # the Pong: the callback closes
        self.successResultOf(d)
        self.assertTrue(tc.disconnecting)
        self.assertFalse(tc.disconnected)
        clock.advance(CLOSE_GRACE)  # the peer never reads again
        self.assertTrue(tc.disconnected, "the close grace did not abort")


@implementer(IPullProducer)
class Counter:
    def __init__(self, app: Recorder) -> None:
        self.app = app
        self.resumed = 0
        self.stopped = 0

    def resumeProducing(self) -> None:
        self.resumed += 1
        self.app.sendMessage(StringValue(value=f"chunk {self.resumed}"))

    def stopProducing(self) -> None:
        self.stopped += 1


class Streams(Recorder):
    """Registers a producer as soon as the peer is proven."""

    producer: Counter

    def peerAuthenticated(self) -> None:
        super().peerAuthenticated()
        self.producer = Counter(self)
        assert self.transport is not None
        self.transport.registerProducer(self.producer, False)


class Quits(Recorder):
    """Sends an Error and closes at the first message."""

    def messageReceived(self, message: Any) -> None:
        super().messageReceived(message)
        self.disconnect("enough")


class ProducerTests(SynchronousTestCase):
    def test_node_close_stops_the_producer(self) -> None:
        """
        The node closes (here: the peer sent an Error) while the application's
        producer is registered: the producer is unregistered from TCP, which
        would otherwise wait for it before closing, and stopped, once.
        """
        clock = Clock()
        a, b = node(A_SEED, clock, protocol=Streams), node(B_SEED, clock, protocol=Quits)
        link = dial(a, b)
        streams = app(link.client)
        assert isinstance(streams, Streams)
        self.assertIsNone(link.clientIO.producer)
        self.assertTrue(link.client._lostCalled)
        self.assertIsInstance(streams.lost[0].value, errors.PeerError)
        self.assertEqual(streams.producer.stopped, 1)

    def test_application_close_stops_the_producer(self) -> None:
        clock = Clock()
        a, b = node(A_SEED, clock), node(B_SEED, clock)
        link = dial(a, b)
        producer = Pusher()
        link.client.registerProducer(producer, True)
        self.assertIs(link.clientIO.producer.appProducer, producer)  # through a send watch
        app(link.client).disconnect("done")
        self.assertIsNone(link.clientIO.producer)
        self.assertEqual(producer.stopped, 1)
        link.flush()
        self.assertIsInstance(app(link.client).lost[0].value, errors.ClosedByUs)
        self.assertEqual(producer.stopped, 1)


@implementer(IPushProducer)
class Pusher:
    stopped = 0

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped += 1


class _FullSocket(abstract.FileDescriptor):
    """A Twisted FileDescriptor whose socket takes nothing until L{full} is false."""

    def __init__(self) -> None:
        super().__init__(MemoryReactor())
        self.connected = 1
        self.full = True

    def writeSomeData(self, data: bytes) -> int:
        return 0 if self.full else len(data)

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "10.0.0.9", 1)

    getHost = getPeer

    def abortConnection(self) -> None:
        """The close grace's; not reached in these tests."""


@implementer(IPushProducer)
class DropsSlowPeer:
    """Closes the connection when TCP pauses it (or raises there)."""

    def __init__(self, proto: BOTD2Protocol, raises: bool) -> None:
        self.proto = proto
        self.raises = raises

    def pauseProducing(self) -> None:
        if self.raises:
            raise RuntimeError("a bug in the application's pauseProducing")
        self.proto.disconnect("you read too slowly")

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class CloseFromPauseTests(SynchronousTestCase):
    """
    A producer that closes the connection from pauseProducing, called by
    TCP inside botd2's own write: nothing is registered on TCP after the
    close, so TCP closes once it drained, not at the grace's abort.
    """

    def check(self, raises: bool) -> None:
        clock = Clock()
        a, b = node(A_SEED, clock), node(B_SEED, clock)
        proto = dial(a, b).client
        fd = _FullSocket()
        proto.transport = fd
        proto.registerProducer(DropsSlowPeer(proto, raises), True)
        app(proto).sendMessage(BytesValue(value=b"x" * 70000))  # written at once: TCP pauses
        self.assertTrue(proto.disconnecting)
        self.assertIsNone(fd.producer)
        fd.full = False  # the peer reads everything: TCP closes now
        self.assertIs(fd.doWrite(), main.CONNECTION_DONE)

    def test_disconnect_from_pause(self) -> None:
        self.check(False)

    def test_raise_in_pause(self) -> None:
        self.check(True)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ProducerTCPTests(TestCase):
    """The same over loopback TCP, where a registered producer holds a close."""

    timeout = 30

    @defer.inlineCallbacks
    def test_peer_error_with_producer(self) -> Any:
        # a's timers on a Clock that never moves: only a prompt close can end it
        a = PeerFactory(PrivateKey.from_int(A_SEED), protocol=Streams, clock=Clock())
        b = PeerFactory(PrivateKey.from_int(B_SEED), protocol=Quits)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(b)
        self.addCleanup(port.stopListening)
        streams = yield a.connect(f"{b.nodeID}@127.0.0.1:{port.getHost().port}")
        assert streams.transport is not None
        reason = yield streams.transport.whenLost().addTimeout(10, reactor)
        self.assertIsInstance(reason, errors.PeerError)
        self.assertEqual(streams.producer.stopped, 1)
        yield b.whenPeerGone(a.identity.public_key)


def refuses(key: PublicKey) -> bool:
    raise RuntimeError("the allow-list store is down")


class AllowRaisesTests(SynchronousTestCase):
    def test_refused_and_logged(self) -> None:
        """
        An C{allow} policy that raises refuses the key (closed, sending
        nothing, as any refusal) and is logged with its traceback; nothing
        escapes into the reactor.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        a, b = node(A_SEED, clock), node(B_SEED, clock, allow=refuses)
        link = dial(a, b)
        self.assertFalse(link.server.authenticated)
        self.assertTrue(link.server._lostCalled)
        self.assertEqual(b.peers, {})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        logged = [e for e in events if "log_failure" in e]
        self.assertEqual(len(logged), 1)
        self.assertEqual(logged[0]["log_level"], LogLevel.critical)
        self.assertEqual(logged[0]["nodeID"], a.nodeID)


class NodeServiceStopTests(SynchronousTestCase):
    def test_stop_waits_for_the_connections(self) -> None:
        """
        stopService fires once every connection is gone, not when the port
        stops listening; a peer that does not read holds it for the close
        grace at most.
        """
        memory = MemoryReactorClock()
        a = node(A_SEED, memory)
        b = PeerFactory(PrivateKey.from_int(B_SEED), protocol=Recorder, reactor=memory)
        port = memory.listenTCP(9945, b)
        service = NodeService(b, port)
        service.startService()
        link = dial(a, b)  # b's protocol: the server side
        self.assertTrue(link.server.authenticated)
        stopped = service.stopService()
        self.assertNoResult(stopped)  # the Error is queued, the peer has not read it
        memory.advance(CLOSE_GRACE - 0.1)
        self.assertNoResult(stopped)
        memory.advance(0.1)  # the grace is over: aborted
        link.flush()
        self.successResultOf(stopped)
        self.assertEqual(b.connections, set())
        self.assertEqual([c for c in memory.getDelayedCalls() if c.active()], [])

    def test_stop_with_a_reading_peer(self) -> None:
        memory = MemoryReactorClock()
        a = node(A_SEED, memory)
        b = PeerFactory(PrivateKey.from_int(B_SEED), protocol=Recorder, reactor=memory)
        service = NodeService(b, memory.listenTCP(9945, b))
        service.startService()
        link = dial(a, b)
        stopped = service.stopService()
        link.flush()
        self.successResultOf(stopped)
        self.assertEqual(app(link.client).lost[0].value.message, "the node is shutting down")
