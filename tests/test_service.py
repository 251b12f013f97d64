"""Persistent peers (ClientService with backoff) and the node service, in memory."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from botd2.keys import InvalidAddress, PeerAddress, PrivateKey
from botd2.protocol import BOTD2Protocol, PeerFactory
from botd2.service import NodeService, persistentPeer
from tests.support import Link, Recorder, address, app, dial


class PersistentPeerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.a = PeerFactory(PrivateKey.from_int(0xA), protocol=Recorder, reactor=self.reactor)
        self.b = PeerFactory(PrivateKey.from_int(0xB), protocol=Recorder, reactor=self.reactor)
        self.address = PeerAddress(self.b.identity.public_key, "10.0.0.2", 9945)
        endpoint = TCP4ClientEndpoint(self.reactor, "10.0.0.2", 9945)
        self.service = persistentPeer(self.a, self.address, endpoint=endpoint, maxDelay=10)
        self.addCleanup(self.service.stopService)

    def completePending(self) -> Link:
        """Join the newest pending TCP connect of node a to node b in memory."""
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        client = factory.buildProtocol(IPv4Address("TCP", host, port))
        server = self.b.buildProtocol(address())
        assert server is not None
        link = Link(client, server, self.reactor)
        link.flush()
        # the endpoint wraps our protocol
        link.client = client._wrappedProtocol
        return link

    def test_connects_and_reconnects(self) -> None:
        self.service.startService()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        link = self.completePending()
        self.assertIn(self.b.identity.public_key, self.a.peers)
        d = self.service.whenConnected()
        session = self.successResultOf(d)
        self.assertIs(session.app, link.client.app)
        self.assertTrue(link.client.authenticated)
        # the peer goes away: after a backoff of at most 10 s, a.dials again
        link.serverIO.loseConnection()
        link.flush()
        self.assertNotIn(self.b.identity.public_key, self.a.peers)
        self.reactor.advance(10)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.completePending()
        self.assertIn(self.b.identity.public_key, self.a.peers)

    def test_address_string(self) -> None:
        """
        C{persistentPeer} takes C{"NODEID@HOST:PORT"} as C{connect()} does,
        and dials that host and port.
        """
        service = persistentPeer(self.a, f"{self.b.nodeID}@10.0.0.3:9946", maxDelay=10)
        self.addCleanup(service.stopService)
        service.startService()
        host, port = self.reactor.tcpClients[-1][:2]
        self.assertEqual((host, port), ("10.0.0.3", 9946))
        link = self.completePending()
        session = self.successResultOf(service.whenConnected())
        self.assertIs(session.app, link.client.app)
        self.assertIn(self.b.identity.public_key, self.a.peers)
        self.assertEqual(service.name, f"peer {self.b.nodeID}@10.0.0.3:9946")

    def test_bad_address_string(self) -> None:
        """A string that is no C{NODEID@HOST[:PORT]}: C{InvalidAddress} at once."""
        self.assertRaises(InvalidAddress, persistentPeer, self.a, "nonsense")

    def test_redials_after_own_disconnect(self) -> None:
        """
        The application closing the connection itself does not stop the
        service: it redials after the backoff, until C{stopService()}.
        """
        self.service.startService()
        link = self.completePending()
        session = self.successResultOf(self.service.whenConnected())
        session.app.disconnect("going for a moment")
        link.flush()
        self.assertEqual(app(link.server).lost[0].value.message, "going for a moment")
        self.assertNotIn(self.b.identity.public_key, self.a.peers)
        self.reactor.advance(10)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        second = self.completePending()
        again = self.successResultOf(self.service.whenConnected())
        self.assertIsNot(again, session)
        stopped = self.service.stopService()
        second.flush()
        self.successResultOf(stopped)
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_failed_handshake_is_retried(self) -> None:
        self.service.startService()
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        client = factory.buildProtocol(IPv4Address("TCP", host, port))
        other = PeerFactory(PrivateKey.from_int(0xC), protocol=Recorder, reactor=self.reactor)
        server = other.buildProtocol(address())  # the wrong node answers
        assert server is not None
        Link(client, server, self.reactor).flush()
        self.assertEqual(self.a.peers, {})
        self.reactor.advance(10)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_waits_while_a_connection_exists(self) -> None:
        """
        While b holds a connection to a (here one b dialled), a's persistent
        dial waits instead of replacing it; it dials once that one is gone.
        """
        inbound = dial(self.b, self.a)
        self.assertIn(self.b.identity.public_key, self.a.peers)
        self.service.startService()
        self.reactor.advance(100)
        self.assertEqual(self.reactor.tcpClients, [])
        inbound.clientIO.loseConnection()
        inbound.flush()
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_stop(self) -> None:
        self.service.startService()
        link = self.completePending()
        proto = self.a.peers[self.b.identity.public_key]
        self.assertIsInstance(proto, BOTD2Protocol)
        stopped = self.service.stopService()
        self.assertTrue(proto.disconnecting)
        link.flush()
        self.successResultOf(stopped)
        self.assertEqual(app(proto).lost[0].value.reason, "closed by the application")

    def test_failed_attempts_logged(self) -> None:
        """Each failed attempt is one line naming the peer and why."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.service.startService()
        factory = self.reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        lines = [formatEvent(e) for e in events]
        mine = [line for line in lines if line.startswith("botd2 cannot connect to")]
        self.assertEqual(
            mine, [f"botd2 cannot connect to {self.address}: Connection was refused by other "
                   "side."]
        )
        # ClientService's own retry line names the peer too
        retry = [line for line in lines if "Scheduling retry" in line]
        self.assertIn(f"<botd2 peer {self.address}>", retry[0])

    def test_node_stop_tells_persistent_peers(self) -> None:
        """
        A node shutting down tells the peers it keeps connected so, not
        "closed by the application" (its persistent services stop after).
        """
        node = NodeService(self.a, self.reactor.listenTCP(9945, self.a))
        self.service.setServiceParent(node)
        node.startService()
        link = self.completePending()
        stopped = node.stopService()
        link.flush()
        self.successResultOf(stopped)
        self.assertEqual(app(link.server).lost[0].value.message, "the node is shutting down")
