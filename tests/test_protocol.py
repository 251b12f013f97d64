"""
The Twisted layer, deterministic: in-memory transports (C{iosim},
C{StringTransport}) and one C{task.Clock}; no sockets, no real time.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value, StringValue
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectingCancelledError, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from botd2 import errors
from botd2.connection import (
    ErrorReceived,
    Initiator,
    Responder,
)
from botd2.keys import PrivateKey
from botd2.protocol import FLUSH_THRESHOLD, BOTD2Protocol, NotReady, PeerFactory, PeerProtocol
from tests.support import Link, Recorder, address, app, dial, ids, node
from tests.vectors import botd2 as vectors
from tests.vectors import h

A_SEED, B_SEED = 0xA11CE, 0xB0B


def textsOf(proto: BOTD2Protocol) -> list[str]:
    return app(proto).texts()


class CountingTransport(StringTransport):
    """A StringTransport that counts write calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self.writes += 1
        super().writeSequence(data)


def logged(test: SynchronousTestCase) -> EventLoggingObserver:
    return EventLoggingObserver.createWithCleanup(test, globalLogPublisher)


@implementer(IPushProducer)
class RecordingProducer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


def stranger(b: PeerFactory) -> tuple[BOTD2Protocol, StringTransport, Initiator]:
    """
    Node C{b}'s protocol for an inbound connection, on a C{StringTransport},
    and a sans-IO initiator (key A_SEED) dialling it, its Init made and not sent.
    """
    server = b.buildProtocol(address())
    assert server is not None
    st = StringTransport()
    server.makeConnection(st)
    initiator = Initiator(PrivateKey.from_int(A_SEED), b.identity.public_key)
    initiator.initiate()
    return server, st, initiator


class HandshakeTests(SynchronousTestCase):
    def test_both_roles(self) -> None:
        """Both apps hear of the peer once, with its key, address and side."""
        events = logged(self)
        clock = Clock()
        a, b = node(A_SEED, clock), node(B_SEED, clock)
        link = dial(a, b)
        for proto, other, initiator in ((link.client, b, True), (link.server, a, False)):
            self.assertEqual(app(proto).authenticated, 1)
            peer = app(proto).peer
            self.assertEqual(peer.node, other.identity.public_key)
            self.assertEqual(peer.nodeID, other.nodeID)
            self.assertEqual(peer.initiator, initiator)
            self.assertIs(peer.address, proto.transport.getPeer())
        self.assertEqual(a.peers, {b.identity.public_key: link.client})
        self.assertEqual(b.peers, {a.identity.public_key: link.server})
        done = [e for e in events if "handshake" in e["log_format"]]
        self.assertEqual(len(done), 2)
        self.assertEqual({e["peer"] for e in done}, {a.nodeID, b.nodeID})
        self.assertEqual({e["direction"] for e in done}, {"inbound", "outbound"})

    def test_message_both_ways(self) -> None:
        clock = Clock()
        link = dial(node(A_SEED, clock), node(B_SEED, clock))
        app(link.client).sendMessage(StringValue(value="to b"))
        app(link.server).sendMessage(StringValue(value="to a"))
        link.flush()
        self.assertEqual(textsOf(link.server), ["to b"])
        self.assertEqual(textsOf(link.client), ["to a"])

    def test_vector_through_twisted(self) -> None:
        """
        handshake.json through the Twisted layer, with its keys and ids
        injected: Init, Ack, key confirmation, and the first keep-alive Ping
        and its Pong are the vector's bytes on the wire.
        """
        v = vectors("handshake.json")
        clock = Clock()
        i_s = PrivateKey(h(v["initiator"]["static"]["private"]))
        r_s = PrivateKey(h(v["responder"]["static"]["private"]))
        ping_id = v["transport"][1]["message"]["ping"]["id"]
        pong_id = v["transport"][2]["message"]["pong"]["id"]
        a = PeerFactory(i_s, protocol=Recorder, clock=clock)
        b = PeerFactory(r_s, protocol=Recorder, clock=clock)
        client = a.wrap(Initiator(
            i_s, r_s.public_key,
            ephemeral=PrivateKey(h(v["initiator"]["ephemeral"]["private"])),
            init_id=v["init"]["id"], ids=ids(ping_id),
        ))
        server = b.wrap(Responder(
            r_s, ephemeral=PrivateKey(h(v["responder"]["ephemeral"]["private"])),
            ack_id=v["ack"]["id"], ids=ids(pong_id),
        ))
        ct, st = StringTransport(), StringTransport()
        client.makeConnection(ct)
        server.makeConnection(st)

        def take(t: StringTransport) -> str:
            value = t.value()
            t.clear()
            return value.hex()

        self.assertEqual(take(ct), v["init"]["frame"])
        server.dataReceived(h(v["init"]["frame"]))
        self.assertEqual(take(st), v["ack"]["frame"])
        client.dataReceived(h(v["ack"]["frame"]))
        self.assertEqual(take(ct), v["transport"][0]["frame"])
        server.dataReceived(h(v["transport"][0]["frame"]))
        self.assertTrue(server.authenticated and client.authenticated)
        self.assertEqual(take(st), "")
        # The first keep-alive Ping goes one interval after completion; the
        # responder's is due at the same moment, so hold it back by hand.
        server.keepalive.nextPingAt = None  # type: ignore[union-attr]
        clock.advance(60)
        self.assertEqual(take(ct), v["transport"][1]["frame"])
        server.dataReceived(h(v["transport"][1]["frame"]))
        self.assertEqual(take(st), v["transport"][2]["frame"])
        client.dataReceived(h(v["transport"][2]["frame"]))
        self.assertIsNone(client.keepalive.outstanding)  # type: ignore[union-attr]

    def test_byte_at_a_time(self) -> None:
        """Every byte in its own read, both ways, messages included."""
        clock = Clock()
        a, b = node(A_SEED, clock), node(B_SEED, clock)
        client = a.buildInitiator(b.identity.public_key)
        server = b.buildProtocol(address())
        assert server is not None
        ct, st = StringTransport(), StringTransport()
        client.makeConnection(ct)
        server.makeConnection(st)

        def shuttle() -> bool:
            clock.advance(0)
            moved = False
            for src, dst in ((ct, server), (st, client)):
                data = src.value()
                src.clear()
                for i in range(len(data)):
                    dst.dataReceived(data[i : i + 1])
                moved = moved or bool(data)
            return moved

        while shuttle():
            pass
        self.assertTrue(client.authenticated and server.authenticated)
        for k in range(3):
            app(client).sendMessage(StringValue(value=f"m{k}" * 50))
        while shuttle():
            pass
        self.assertEqual(textsOf(server), [f"m{k}" * 50 for k in range(3)])

    def test_ack_and_transport_frames_in_one_read(self) -> None:
        """
        The responder's Ack and its first transport frames arrive in one
        read: the app is told of the peer, then gets the messages, in order.
        """
        clock = Clock()
        a = node(A_SEED, clock)
        r_s = PrivateKey.from_int(B_SEED)
        client = a.buildInitiator(r_s.public_key)
        ct = StringTransport()
        client.makeConnection(ct)
        responder = Responder(r_s)
        responder.receive_data(ct.value())
        responder.send_payload(StringValue(value="one"))
        responder.send_payload(StringValue(value="two"))
        client.dataReceived(responder.data_to_send())
        self.assertEqual(app(client).authenticated, 1)
        self.assertEqual(textsOf(client), ["one", "two"])

    def test_confirmation_and_message_in_one_read(self) -> None:
        """The key confirmation and a message in one read complete the responder."""
        clock = Clock()
        b = node(B_SEED, clock)
        server, st, initiator = stranger(b)
        server.dataReceived(initiator.data_to_send())
        initiator.receive_data(st.value())
        initiator.send_payload(StringValue(value="first"))
        server.dataReceived(initiator.data_to_send())
        self.assertEqual(app(server).authenticated, 1)
        self.assertEqual(textsOf(server), ["first"])


class InvalidHandshakeTests(SynchronousTestCase):
    """
    Every case of invalid_init.json and invalid_ack.json, fed to the Twisted
    layer: the connection is closed and not a byte is sent back.
    """

    def test_invalid_init(self) -> None:
        v = vectors("invalid_init.json")
        r_s = PrivateKey(h(v["responder"]["static"]["private"]))
        for case in v["cases"]:
            events = logged(self)
            b = PeerFactory(r_s, protocol=Recorder, clock=Clock())
            server = b.buildProtocol(address())
            assert server is not None
            st = StringTransport()
            server.makeConnection(st)
            data = h(case["prefix"] if case.get("prefix_only") else case["frame"])
            server.dataReceived(data)
            self.assertEqual(st.value(), b"", case["name"])
            self.assertTrue(st.disconnected, case["name"])  # aborted
            server.connectionLost(Failure(ConnectionLost()))
            self.assertEqual(app(server).authenticated, 0)
            self.assertEqual(b.peers, {})
            self.assertEqual(b.connections, set())
            errors_ = [e for e in events if "protocol error" in e["log_format"]]
            self.assertEqual(len(errors_), 1, case["name"])
            self.assertNotIn("log_failure", errors_[0])

    def test_invalid_ack(self) -> None:
        v = vectors("invalid_ack.json")
        i_s = PrivateKey(h(v["initiator"]["static"]["private"]))
        r_s = PrivateKey(h(v["responder"]["static"]["private"])).public_key
        for case in v["cases"]:
            a = PeerFactory(i_s, protocol=Recorder, clock=Clock())
            client = a.wrap(Initiator(
                i_s, r_s, ephemeral=PrivateKey(h(v["initiator"]["ephemeral"]["private"])),
                init_id=v["initiator"]["sent_init_id"],
            ))
            waiting = client.whenAuthenticated()
            ct = StringTransport()
            client.makeConnection(ct)
            self.assertEqual(ct.value().hex(), v["initiator"]["sent_init_frame"])
            ct.clear()
            client.dataReceived(h(case["prefix"] if case.get("prefix_only") else case["frame"]))
            self.assertEqual(ct.value(), b"", case["name"])  # no key confirmation
            self.assertTrue(ct.disconnected, case["name"])
            client.connectionLost(Failure(ConnectionLost()))
            self.failureResultOf(waiting, errors.HandshakeFailed)
            self.assertEqual(app(client).authenticated, 0)


class HandshakeTimeoutTests(SynchronousTestCase):
    def test_replayed_init(self) -> None:
        """
        A second connection replaying a live connection's Init gets an Ack
        but completes nothing: it does not displace the live one, the app
        never hears of it, and it is closed at the handshake timeout.
        """
        clock = Clock()
        a, b = node(A_SEED, clock), node(B_SEED, clock)
        client = a.buildInitiator(b.identity.public_key)
        server = b.buildProtocol(address())
        assert server is not None
        ct, st = StringTransport(), StringTransport()
        client.makeConnection(ct)
        server.makeConnection(st)
        init = ct.value()
        ct.clear()
        server.dataReceived(init)
        client.dataReceived(st.value())
        server.dataReceived(ct.value())
        self.assertTrue(server.authenticated)

        replay = b.buildProtocol(address("10.0.0.9"))
        assert replay is not None
        rt = StringTransport()
        replay.makeConnection(rt)
        replay.dataReceived(init)
        self.assertNotEqual(rt.value(), b"")  # the Ack: it cannot know yet
        ack_len = len(rt.value())
        self.assertFalse(replay.authenticated)
        self.assertIs(b.peers[a.identity.public_key], server)
        clock.advance(9.9)
        self.assertFalse(rt.disconnecting)
        clock.advance(0.1)
        self.assertTrue(rt.disconnected)
        self.assertEqual(len(rt.value()), ack_len)  # nothing after the Ack
        replay.connectionLost(Failure(ConnectionLost()))
        self.assertIs(b.peers[a.identity.public_key], server)
        self.assertEqual(app(replay).authenticated, 0)
        self.assertEqual(app(server).lost, [])
        self.assertFalse(server.disconnecting)

    def test_no_key_confirmation(self) -> None:
        """A responder that never gets the key confirmation closes at the timeout."""
        clock = Clock()
        b = node(B_SEED, clock, handshakeTimeout=5)
        server, st, initiator = stranger(b)
        server.dataReceived(initiator.data_to_send())
        ack = st.value()
        clock.advance(4.999)
        self.assertFalse(st.disconnecting)
        clock.advance(0.001)
        self.assertTrue(st.disconnected)
        self.assertEqual(st.value(), ack)

    def test_half_frame_times_out(self) -> None:
        """Whatever part of a frame has arrived, the timeout closes it."""
        for data in (b"", b"\x00", b"\x00\x00\x00\xd4" + b"\x0a" * 100):
            clock = Clock()
            b = node(B_SEED, clock)
            server = b.buildProtocol(address())
            assert server is not None
            st = StringTransport()
            server.makeConnection(st)
            server.dataReceived(data)
            clock.advance(10)
            self.assertTrue(st.disconnected)
            self.assertEqual(st.value(), b"")

    def test_trickle_does_not_extend_the_timeout(self) -> None:
        """
        The timeout counts from the TCP connection, not from the last read:
        an Init sent a byte every 4 s is closed at 10 s, sending nothing.
        """
        clock = Clock()
        b = node(B_SEED, clock)
        server, st, initiator = stranger(b)
        init = initiator.data_to_send()
        for t in range(3):
            server.dataReceived(init[t : t + 1])
            self.assertFalse(st.disconnecting, f"closed at {4 * t} s")
            clock.advance(4 if t < 2 else 2)
        self.assertTrue(st.disconnected)
        self.assertEqual(st.value(), b"")

    def test_initiator_times_out(self) -> None:
        clock = Clock()
        a = node(A_SEED, clock, handshakeTimeout=3)
        client = a.buildInitiator(PrivateKey.from_int(B_SEED).public_key)
        waiting = client.whenAuthenticated()
        ct = StringTransport()
        client.makeConnection(ct)
        clock.advance(3)
        self.assertTrue(ct.disconnected)
        client.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(waiting, errors.HandshakeTimeout)

    def test_timer_cancelled_on_completion(self) -> None:
        clock = Clock()
        link = dial(node(A_SEED, clock), node(B_SEED, clock))
        clock.advance(10)
        link.flush()
        self.assertEqual(app(link.client).lost, [])
        self.assertEqual(app(link.server).lost, [])


class OneConnectionPerPeerTests(SynchronousTestCase):
    """WIRE.md section 7."""

    def assertAlive(self, proto: BOTD2Protocol) -> None:
        self.assertTrue(proto.authenticated and not proto.disconnecting, proto)

    def assertClosedAsReplaced(self, proto: BOTD2Protocol) -> None:
        """
        Closed; an app that was told of the peer hears why.  (A connection
        that loses as it completes is closed before its app is told.)
        """
        self.assertTrue(proto._lostCalled, proto)
        self.assertIsNot(proto.factory.peers.get(proto.peer.node), proto)  # type: ignore[union-attr]
        if app(proto).authenticated:
            (reason,) = app(proto).lost
            self.assertTrue(reason.check(errors.Replaced, errors.PeerError), reason)
            self.assertIn("connection", str(reason.value))
        else:
            self.assertEqual(app(proto).lost, [])

    def test_reconnect_same_side_keeps_newer(self) -> None:
        clock = Clock()
        a, b = node(A_SEED, clock), node(B_SEED, clock)
        first = dial(a, b)
        second = dial(a, b)
        first.flush()
        second.flush()
        self.assertAlive(second.client)
        self.assertAlive(second.server)
        self.assertClosedAsReplaced(first.client)
        self.assertClosedAsReplaced(first.server)
        self.assertEqual(a.peers, {b.identity.public_key: second.client})
        self.assertEqual(b.peers, {a.identity.public_key: second.server})

    def simultaneous(self, order: str) -> None:
        clock = Clock()
        a, b = node(A_SEED, clock), node(B_SEED, clock)
        ab = dial(a, b, greet=False)  # a dials b
        ba = dial(b, a, greet=False)  # b dials a
        if order == "ab-first":
            ab.flush()
            ba.flush()
        elif order == "ba-first":
            ba.flush()
            ab.flush()
        else:
            while ab.pump.pump() | ba.pump.pump():
                pass
        ab.flush()
        ba.flush()
        lower = min(a, b, key=lambda f: bytes(f.identity.public_key))
        kept, dropped = (ab, ba) if lower is a else (ba, ab)
        self.assertAlive(kept.client)
        self.assertAlive(kept.server)
        self.assertClosedAsReplaced(dropped.client)
        self.assertClosedAsReplaced(dropped.server)
        self.assertEqual(len(a.peers), 1)
        self.assertEqual(len(b.peers), 1)
        self.assertIn(kept.client, a.peers.values() if lower is a else b.peers.values())

    def test_simultaneous_dial_ab_first(self) -> None:
        self.simultaneous("ab-first")

    def test_simultaneous_dial_ba_first(self) -> None:
        self.simultaneous("ba-first")

    def test_simultaneous_dial_interleaved(self) -> None:
        self.simultaneous("interleaved")

    def test_both_lower_and_higher(self) -> None:
        """The rule holds whichever node has the lower ID."""
        for sa, sb in ((A_SEED, B_SEED), (B_SEED, A_SEED), (7, 8), (8, 7)):
            clock = Clock()
            a, b = node(sa, clock), node(sb, clock)
            ab = dial(a, b, greet=False)
            ba = dial(b, a, greet=False)
            ab.flush()
            ba.flush()
            lower = a if bytes(a.identity.public_key) < bytes(b.identity.public_key) else b
            for f in (a, b):
                (kept,) = f.peers.values()
                # the kept connection is the one the lower node dialled
                self.assertEqual(kept.initiator, f is lower)

    def test_redial_while_the_old_one_closes(self) -> None:
        """
        A connection that is closing does not compete: the higher node closes
        an inbound connection and dials at once (its TCP close still pending,
        the peer not reading yet); both nodes keep the new one.
        """
        clock = Clock()
        a, b = node(A_SEED, clock), node(B_SEED, clock)
        low, high = sorted((a, b), key=lambda f: bytes(f.identity.public_key))
        old = dial(low, high)  # dialled by the lower node, kept on both
        old.server.disconnect("the application closes it")
        old.pump.pump()  # the Error reaches the lower node, which closes
        self.assertTrue(old.client.disconnecting)
        self.assertTrue(old.server.disconnecting)  # the higher one has not seen the end yet
        self.assertFalse(old.server._lostCalled)
        self.assertIs(high.peers[low.identity.public_key], old.server)
        new = dial(high, low)
        self.assertAlive(new.client)
        self.assertIs(high.peers[low.identity.public_key], new.client)
        old.flush()  # the Error arrives; the old connection goes on both sides
        new.flush()
        self.assertAlive(new.client)
        self.assertAlive(new.server)
        self.assertEqual(high.peers, {low.identity.public_key: new.client})
        self.assertEqual(low.peers, {high.identity.public_key: new.server})

    def test_replaced_gets_error(self) -> None:
        """The closed connection gets an Error saying why, under its own keys."""
        clock = Clock()
        a, b = node(A_SEED, clock), node(B_SEED, clock)
        old = Initiator(a.identity, b.identity.public_key)
        old.initiate()
        server_old = b.buildProtocol(address())
        assert server_old is not None
        st = StringTransport()
        server_old.makeConnection(st)
        server_old.dataReceived(old.data_to_send())
        old.receive_data(st.value())
        st.clear()
        server_old.dataReceived(old.data_to_send())
        self.assertTrue(server_old.authenticated)
        dial(a, b)  # a newer connection from the same side
        clock.advance(0)
        events = old.receive_data(st.value())
        self.assertIsInstance(events[-1], ErrorReceived)
        assert isinstance(events[-1], ErrorReceived)
        self.assertIn("newer connection", events[-1].message)


class AdmissionTests(SynchronousTestCase):
    def test_handshake_cap_per_address(self) -> None:
        b = node(B_SEED, maxHandshakesPerAddress=3)
        same = [b.buildProtocol(address("10.0.0.1")) for _ in range(4)]
        self.assertEqual([p is not None for p in same], [True, True, True, False])
        self.assertIsNotNone(b.buildProtocol(address("10.0.0.2")))

    def test_handshake_cap_per_ipv6_64(self) -> None:
        """One host commonly holds a whole IPv6 /64: the cap counts by /64."""
        from twisted.internet.address import IPv6Address

        b = node(B_SEED, maxHandshakesPerAddress=2)
        same64 = [b.buildProtocol(IPv6Address("TCP", f"2001:db8::{k}", 1)) for k in range(3)]
        self.assertEqual([p is not None for p in same64], [True, True, False])
        self.assertIsNotNone(b.buildProtocol(IPv6Address("TCP", "2001:db8:0:1::1", 1)))

    def test_handshake_cap_total(self) -> None:
        b = node(B_SEED, maxHandshakes=5, maxHandshakesPerAddress=100)
        protos = [b.buildProtocol(address(f"10.0.0.{k}")) for k in range(6)]
        self.assertEqual(sum(p is not None for p in protos), 5)

    def stalled(self, b: PeerFactory, host: str) -> tuple[BOTD2Protocol, StringTransport]:
        proto = b.buildProtocol(address(host))
        assert proto is not None, f"{host} refused"
        st = StringTransport()
        proto.makeConnection(st)
        return proto, st

    def held(self, b: PeerFactory) -> dict[str | None, int]:
        return {h: len(p) for h, p in b._handshakingByHost.items()}

    def test_eviction_when_full(self) -> None:
        """
        With the total handshake cap full, a stranger from an address holding
        at least two fewer handshakes than the busiest one is admitted, and
        the busiest address's oldest handshake is aborted, sending nothing;
        when every address holds about the same share, it is refused.
        """
        b = node(B_SEED, maxHandshakes=6, maxHandshakesPerAddress=100)
        one = [self.stalled(b, "10.0.0.1") for _ in range(4)]
        self.stalled(b, "10.0.0.2")
        self.stalled(b, "10.0.0.2")
        self.stalled(b, "10.0.0.3")  # 10.0.0.1 holds 4, 10.0.0.3 none: evicts
        self.assertTrue(one[0][1].disconnected)
        self.assertEqual(one[0][1].value(), b"")
        self.assertFalse(any(st.disconnected for _, st in one[1:]))
        self.assertEqual(self.held(b), {"10.0.0.1": 3, "10.0.0.2": 2, "10.0.0.3": 1})
        self.stalled(b, "10.0.0.3")  # 3 >= 1 + 2: evicts the next oldest
        self.assertTrue(one[1][1].disconnected)
        self.assertEqual(self.held(b), {"10.0.0.1": 2, "10.0.0.2": 2, "10.0.0.3": 2})
        self.assertIsNone(b.buildProtocol(address("10.0.0.3")))  # 2 < 2 + 2: refused
        self.stalled(b, "10.0.0.4")  # none held: evicts from the first busiest
        self.assertTrue(one[2][1].disconnected)
        self.assertEqual(self.held(b), {"10.0.0.1": 1, "10.0.0.2": 2, "10.0.0.3": 2,
                                        "10.0.0.4": 1})
        self.assertEqual(len(b._handshaking), 6)
        # The aborted ones leave when their connection is lost, never counted twice.
        for proto, _ in one[:3]:
            proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(b._handshaking), 6)
        self.assertEqual(len(b.connections), 6)

    def test_evicted_for_an_honest_peer(self) -> None:
        """
        The total cap full of stalled handshakes from one address: an honest
        peer from another completes its handshake; the evicted connection
        never reached the application and ends as closed by us.
        """
        clock = Clock()
        a = node(A_SEED, clock)
        b = node(B_SEED, clock, maxHandshakes=3)
        stalled = [self.stalled(b, "10.0.0.1") for _ in range(3)]
        link = dial(a, b, clientAddress=address("10.0.0.2"))
        self.assertTrue(link.server.authenticated)
        self.assertIn(a.identity.public_key, b.peers)
        victim, st = stalled[0]
        self.assertTrue(st.disconnected)
        victim.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(app(victim).authenticated, 0)
        self.assertIsInstance(victim._reason, errors.ClosedByUs)
        self.assertIn("evicted", str(victim._reason))

    def test_eviction_when_connections_full(self) -> None:
        """The connection cap full, some of them handshakes: the same rule."""
        clock = Clock()
        b = node(B_SEED, clock, maxConnections=3)
        dial(node(1, clock), b)
        stalled = [self.stalled(b, "10.0.0.1") for _ in range(2)]
        self.stalled(b, "10.0.0.2")
        self.assertTrue(stalled[0][1].disconnected)
        self.assertIsNone(b.buildProtocol(address("10.0.0.3")))  # 1 each: refused

    def test_no_eviction_over_the_per_address_cap(self) -> None:
        b = node(B_SEED, maxHandshakes=3, maxHandshakesPerAddress=1)
        self.stalled(b, "10.0.0.1")
        self.assertIsNone(b.buildProtocol(address("10.0.0.1")))
        self.assertEqual(self.held(b), {"10.0.0.1": 1})

    def test_stranger_log_budget(self) -> None:
        """
        Log events about strangers are limited to a budget (100 at once, 10
        a second): a flood of refusals writes 100 lines, and the count of
        the others is logged, in one line, once the budget allows again.
        """
        from twisted.logger import formatEvent

        events = logged(self)
        clock = Clock()
        b = node(B_SEED, clock, maxHandshakesPerAddress=1)
        self.stalled(b, "10.0.0.1")

        def lines(text: str) -> list[str]:
            return [formatEvent(e) for e in events if text in formatEvent(e)]

        for _ in range(150):
            self.assertIsNone(b.buildProtocol(address("10.0.0.1")))
        self.assertEqual(len(lines("refused a connection from")), 100)
        self.assertEqual(lines("log events about unauthenticated"), [])
        clock.advance(0.1)  # one token back
        self.assertIsNone(b.buildProtocol(address("10.0.0.1")))
        self.assertEqual(
            lines("log events about unauthenticated"),
            ["botd2 left 50 log events about unauthenticated connections out "
             "(more than 10 a second)"],
        )
        self.assertEqual(len(lines("refused a connection from")), 101)
        # A count left at the end of a flood is logged by the 5 s sweep.
        for _ in range(3):
            b.buildProtocol(address("10.0.0.1"))
        clock.advance(5)
        self.assertEqual(len(lines("log events about unauthenticated")), 2)
        self.assertIn("left 3 log events", lines("log events about unauthenticated")[-1])

    def test_one_line_per_stranger(self) -> None:
        """
        A stranger that breaks a rule, or times out, is one log line (the one
        that says why), not that line and a close line repeating it.
        """
        from twisted.logger import formatEvent

        events = logged(self)
        clock = Clock()
        b = node(B_SEED, clock)
        garbage, _ = self.stalled(b, "10.0.0.1")
        garbage.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        silent, _ = self.stalled(b, "10.0.0.2")
        clock.advance(10)
        for proto in (garbage, silent):
            proto.connectionLost(Failure(ConnectionLost()))
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("protocol error from (unauthenticated)", lines[0])
        self.assertIn("bad_length", lines[0])
        self.assertIn("timed out", lines[1])

    def test_flood_of_strangers_that_just_close(self) -> None:
        """
        The count of the close lines left out at the end of a flood is logged
        by the sweep (the last close line is counted before the sweep may stop).
        """
        from twisted.logger import formatEvent

        events = logged(self)
        clock = Clock()
        b = node(B_SEED, clock)
        b.doStart()  # as a listening port does
        for i in range(101):  # the budget holds 100 lines
            proto, _ = self.stalled(b, f"10.0.{i // 100}.{i % 100}")
            proto.connectionLost(Failure(ConnectionDone()))
        clock.advance(5)
        counts = [formatEvent(e) for e in events if "log events about" in formatEvent(e)]
        self.assertEqual(len(counts), 1, counts)
        self.assertIn("left 1 log events", counts[0])

    def test_evicted_stranger_one_line(self) -> None:
        from twisted.logger import formatEvent

        events = logged(self)
        clock = Clock()
        b = node(B_SEED, clock, maxHandshakes=2)
        victim, _ = self.stalled(b, "10.0.0.1")
        self.stalled(b, "10.0.0.1")
        self.assertIsNotNone(b.buildProtocol(address("10.0.0.2")))  # evicts the victim
        victim.connectionLost(Failure(ConnectionDone()))  # TCP's own, later
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("evicted", lines[0])

    def test_count_logged_after_the_flood(self) -> None:
        """
        The count of events left out is logged by the 5 s sweep also when no
        connection is left, and when the node stops listening.
        """
        from twisted.logger import formatEvent

        events = logged(self)
        clock = Clock()
        b = node(B_SEED, clock)
        b.doStart()  # as a listening port does
        for i in range(120):
            proto, _ = self.stalled(b, f"10.0.{i // 100}.{i % 100}")
            proto.dataReceived(b"garbage!")
            proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(b.connections, set())

        def counts() -> list[str]:
            return [formatEvent(e) for e in events if "log events about" in formatEvent(e)]

        self.assertEqual(counts(), [])
        clock.advance(5)
        self.assertEqual(counts(), ["botd2 left 20 log events about unauthenticated connections "
                                    "out (more than 10 a second)"])
        self.assertEqual(clock.getDelayedCalls(), [])  # nothing left to wait for
        for i in range(110):
            proto, _ = self.stalled(b, f"10.1.{i // 100}.{i % 100}")
            proto.dataReceived(b"garbage!")
            proto.connectionLost(Failure(ConnectionLost()))
        b.doStop()  # the node stops listening before the sweep
        self.assertEqual(len(counts()), 2)
        # 49 tokens were left after the count line: 61 of 110 left out
        self.assertIn("left 61 log events", counts()[-1])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_slot_freed_by_timeout_and_completion(self) -> None:
        clock = Clock()
        a, b = node(A_SEED, clock), node(B_SEED, clock, maxHandshakes=1)
        stalled = b.buildProtocol(address())
        assert stalled is not None
        st = StringTransport()
        stalled.makeConnection(st)
        self.assertIsNone(b.buildProtocol(address()))
        clock.advance(10)
        stalled.connectionLost(Failure(ConnectionLost()))
        link = dial(a, b)  # the slot is free again
        self.assertTrue(link.server.authenticated)
        # a complete connection no longer counts as a handshake
        self.assertIsNotNone(b.buildProtocol(address()))

    def test_connection_cap(self) -> None:
        clock = Clock()
        b = node(B_SEED, clock, maxConnections=2)
        dial(node(1, clock), b)
        dial(node(2, clock), b)
        self.assertIsNone(b.buildProtocol(address()))

    def test_allow_list(self) -> None:
        clock = Clock()
        a, c = node(A_SEED, clock), node(0xC, clock)
        b = node(B_SEED, clock, allow=[a.identity.public_key])
        self.assertTrue(dial(a, b).server.authenticated)
        refused = dial(c, b)
        self.assertFalse(refused.server.authenticated)
        self.assertEqual(app(refused.client).authenticated, 0)
        self.assertNotIn(c.identity.public_key, b.peers)

    def test_allow_callable(self) -> None:
        clock = Clock()
        a = node(A_SEED, clock)
        b = node(B_SEED, clock, allow=lambda key: False)
        self.assertFalse(dial(a, b).server.authenticated)

    def test_bad_settings(self) -> None:
        key = PrivateKey.from_int(1)
        for kwargs in (
            {"pingInterval": 29.9},
            {"pongTimeout": 0},
            {"handshakeTimeout": 0},
            {"maxHandshakes": 0},
            {"maxHandshakesPerAddress": 0},
            {"maxConnections": 0},
            {"maxMessage": 1000},
        ):
            self.assertRaises(ValueError, PeerFactory, key, clock=Clock(), **kwargs)

    def test_allow_node_ids_as_text(self) -> None:
        """allow= takes node IDs as text too (any case); anything else is refused at once."""
        from botd2.keys import InvalidKey

        a = PrivateKey.from_int(A_SEED).public_key
        factory = PeerFactory(PrivateKey.from_int(1), clock=Clock(),
                              allow=[a.node_id.upper(), PrivateKey.from_int(2).public_key])
        assert factory.allow is not None
        self.assertTrue(factory.allow(a))
        self.assertFalse(factory.allow(PrivateKey.from_int(3).public_key))
        self.assertRaises(TypeError, PeerFactory, PrivateKey.from_int(1), allow=[bytes(a)])
        self.assertRaises(InvalidKey, PeerFactory, PrivateKey.from_int(1), allow=["zz"])


class ApplicationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.a, self.b = node(A_SEED, self.clock), node(B_SEED, self.clock)

    def test_send_before_handshake(self) -> None:
        client = self.a.buildInitiator(self.b.identity.public_key)
        self.assertRaises(NotReady, client.sendMessage, StringValue())
        self.assertRaises(NotReady, PeerProtocol().sendMessage, StringValue())
        self.failureResultOf(PeerProtocol().ping(), NotReady)

    def test_write_refused(self) -> None:
        link = dial(self.a, self.b)
        self.assertRaises(TypeError, link.client.write, b"raw")
        self.assertRaises(TypeError, link.client.writeSequence, [b"raw"])
        self.assertRaises(RuntimeError, app(link.client).dataReceived, b"raw")

    def test_unhandled_payload(self) -> None:
        """A payload of a type the app does not handle is ignored, not an error."""
        link = dial(self.a, self.b)
        app(link.client).sendMessage(Int64Value(value=7))
        app(link.client).sendMessage(StringValue(value="after"))
        link.flush()
        (payload,) = app(link.server).unhandled
        self.assertEqual(payload.type_url, "type.googleapis.com/google.protobuf.Int64Value")
        self.assertEqual(textsOf(link.server), ["after"])

    def test_unhandled_type_url_logged_escaped(self) -> None:
        """
        The default unhandledPayload logs the peer's type URL at debug: cut
        to 100 characters, control characters escaped (no forged log lines).
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        b = node(B_SEED, self.clock, protocol=PeerProtocol)
        link = dial(self.a, b)
        url = "evil/x\n2026-01-01 [botd2#info] forged\x1b[2J" + "y" * 200
        for _ in range(3):  # logged once per connection: a line costs more than a frame
            link.client.connection.send_payload(any_pb2.Any(type_url=url, value=b""))
        link.client._scheduleFlush()
        link.flush()
        (event,) = [e for e in logged if e.get("log_format", "").startswith("ignored a payload")]
        escaped = "evil/x\\n2026-01-01 [botd2#info] forged\\x1b[2J" + "y" * 59
        self.assertEqual(event["type_url"], escaped)
        self.assertTrue(event["type_url"].isprintable())
        self.assertTrue(link.server.authenticated and not link.server.disconnecting)

    def test_payload_that_does_not_parse(self) -> None:
        link = dial(self.a, self.b)
        packed = any_pb2.Any(
            type_url="type.googleapis.com/google.protobuf.StringValue", value=b"\xff\xff\xff"
        )
        link.client.connection.send_payload(packed)
        link.client._scheduleFlush()
        link.flush()
        (reason,) = app(link.server).lost
        self.assertTrue(reason.check(errors.ProtocolViolation))
        self.assertEqual(reason.value.code, "bad_payload")
        (peer_reason,) = app(link.client).lost
        self.assertTrue(peer_reason.check(errors.PeerError))

    def test_application_error(self) -> None:
        """An exception in app code is logged with its traceback; the connection closes."""
        events = logged(self)

        class Broken(Recorder):
            def messageReceived(self, message: Any) -> None:
                raise ZeroDivisionError("app bug")

        b = node(B_SEED, self.clock, protocol=Broken)
        link = dial(self.a, b)
        app(link.client).sendMessage(StringValue(value="boom"))
        link.flush()
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        (reason,) = app(link.server).lost
        self.assertTrue(reason.check(errors.ClosedByUs))
        (peer_reason,) = app(link.client).lost
        self.assertTrue(peer_reason.check(errors.PeerError))
        self.assertIn("internal error", str(peer_reason.value))

    def test_disconnect_reasons(self) -> None:
        link = dial(self.a, self.b)
        app(link.client).disconnect("done here")
        link.flush()
        (ours,) = app(link.client).lost
        (theirs,) = app(link.server).lost
        self.assertTrue(ours.check(errors.ClosedByUs))
        self.assertEqual(str(ours.value), "done here")
        self.assertTrue(theirs.check(errors.PeerError))
        self.assertEqual(theirs.value.message, "done here")

    def test_tcp_closed_by_peer(self) -> None:
        link = dial(self.a, self.b)
        link.serverIO.loseConnection()
        link.flush()
        (reason,) = app(link.client).lost
        self.assertTrue(reason.check(errors.ClosedByPeer))
        self.assertFalse(reason.check(errors.PeerError))
        self.assertEqual(self.a.peers, {})
        self.assertEqual(self.a.connections, set())

    def test_send_after_close_dropped(self) -> None:
        link = dial(self.a, self.b)
        app(link.client).disconnect()
        app(link.client).sendMessage(StringValue(value="late"))
        link.flush()
        self.assertEqual(textsOf(link.server), [])

    def test_one_write_per_turn(self) -> None:
        """Frames sealed in one reactor turn go out in one writeSequence."""
        link = dial(self.a, self.b)
        t = CountingTransport()
        link.client.transport = t
        for k in range(10):
            app(link.client).sendMessage(StringValue(value=str(k)))
        self.assertEqual(t.writes, 0)
        self.clock.advance(0)
        self.assertEqual(t.writes, 1)
        link.server.dataReceived(t.value())
        self.assertEqual(textsOf(link.server), [str(k) for k in range(10)])

    def test_large_output_flushed_at_once(self) -> None:
        """Past FLUSH_THRESHOLD, output goes at once, so TCP can pause a producer."""
        link = dial(self.a, self.b)
        t = CountingTransport()
        link.client.transport = t
        app(link.client).sendMessage(BytesValue(value=b"x" * FLUSH_THRESHOLD))
        self.assertEqual(t.writes, 1)

    def test_streaming_producer(self) -> None:
        """
        A streaming producer goes through a send watch registered on TCP:
        TCP's buffer full pauses it, and reading from the peer stops at the
        next read; drained, both resume.  The application's own pause of
        reading holds apart.
        """
        from botd2.protocol import _SendWatch

        link = dial(self.a, self.b)
        t = StringTransport()
        link.client.transport = t
        producer = RecordingProducer()
        link.client.registerProducer(producer, True)
        watch = t.producer
        assert isinstance(watch, _SendWatch)
        self.assertIs(watch.appProducer, producer)
        self.assertTrue(t.streaming)
        watch.pauseProducing()  # TCP: the send buffer is full
        self.assertEqual((producer.calls, t.producerState), (["pause"], "producing"))
        link.client.dataReceived(b"")  # a read comes in meanwhile: reading stops
        self.assertEqual(t.producerState, "paused")
        link.client.pauseProducing()  # the application too
        watch.resumeProducing()  # drained: the producer resumes, reading not yet
        self.assertEqual((producer.calls[-1], t.producerState), ("resume", "paused"))
        link.client.resumeProducing()
        self.assertEqual(t.producerState, "producing")
        link.client.unregisterProducer()
        self.assertIsNone(watch.appProducer)
        link.client.registerProducer(producer, True)  # again: the same watch carries it
        self.assertIs(t.producer, watch)
        self.assertRaises(RuntimeError, link.client.registerProducer, RecordingProducer(), True)

    def test_pull_producer(self) -> None:
        """A pull producer makes data when asked: it is registered on TCP as it is."""
        link = dial(self.a, self.b)
        t = StringTransport()
        link.client.transport = t
        producer = RecordingProducer()
        link.client.registerProducer(producer, False)
        self.assertIs(t.producer, producer)
        self.assertFalse(t.streaming)
        link.client.unregisterProducer()
        self.assertIsNone(t.producer)

    def test_large_output_watched(self) -> None:
        """
        Without a producer, a connection registers a send watch once its
        output grew (a large write, or many frames), and not before: the
        registration costs memory, and most connections stay small.
        """
        from botd2.protocol import WATCH_FRAMES, WATCH_WRITE, _SendWatch

        link = dial(self.a, self.b)
        t = StringTransport()
        link.client.transport = t
        app(link.client).sendMessage(BytesValue(value=b"x" * 100))
        link.client._flush()
        self.assertIsNone(t.producer)
        app(link.client).sendMessage(BytesValue(value=b"x" * WATCH_WRITE))
        link.client._flush()
        self.assertIsInstance(t.producer, _SendWatch)
        other = dial(node(1, self.clock), self.b)
        t2 = StringTransport()
        other.client.transport = t2
        for _ in range(WATCH_FRAMES):
            app(other.client).sendMessage(StringValue(value="hi"))
            other.client._flush()
        self.assertIsInstance(t2.producer, _SendWatch)

    def test_log_events(self) -> None:
        events = logged(self)
        link = dial(self.a, self.b)
        app(link.client).disconnect("bye")
        link.flush()
        closed = [e for e in events if "closed" in e["log_format"]]
        self.assertEqual(len(closed), 2)
        for e in closed:
            self.assertIn(e["peer"], (self.a.nodeID, self.b.nodeID))
            self.assertEqual(e["log_level"], LogLevel.info)
        self.assertEqual(
            {e["reasonType"] for e in closed}, {"ClosedByUs", "PeerError"}
        )
        self.assertFalse([e for e in events if "log_failure" in e])


class ConnectTests(SynchronousTestCase):
    """PeerFactory.connectEndpoint on a memory reactor."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.a = PeerFactory(PrivateKey.from_int(A_SEED), protocol=Recorder,
                             reactor=self.reactor)
        self.b = PeerFactory(PrivateKey.from_int(B_SEED), protocol=Recorder,
                             reactor=self.reactor)
        self.endpoint = TCP4ClientEndpoint(self.reactor, "10.0.0.2", 9945)

    def complete(self, index: int = 0) -> Link:
        """Join the index-th pending TCP connect to node b in memory."""
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[index]
        client = factory.buildProtocol(IPv4Address("TCP", host, port))
        server = self.b.buildProtocol(address())
        # the endpoint's factory wraps ours: unwrap to get our protocol
        proto = getattr(client, "_wrappedProtocol", client)
        link = Link(client, server, self.reactor)  # type: ignore[arg-type]
        link.flush()
        self.assertIsInstance(proto, BOTD2Protocol)
        return link

    def test_success(self) -> None:
        d = self.a.connectEndpoint(self.endpoint, self.b.identity.public_key)
        self.assertNoResult(d)
        self.complete()
        result = self.successResultOf(d)
        self.assertIsInstance(result, Recorder)
        self.assertEqual(result.peer.node, self.b.identity.public_key)
        self.assertTrue(result.peer.initiator)

    def test_existing_connection_reused(self) -> None:
        d = self.a.connectEndpoint(self.endpoint, self.b.identity.public_key)
        self.complete()
        first = self.successResultOf(d)
        again = self.successResultOf(
            self.a.connectEndpoint(self.endpoint, self.b.identity.public_key)
        )
        self.assertIs(again, first)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_no_second_dial_while_one_is_on(self) -> None:
        d1 = self.a.connectEndpoint(self.endpoint, self.b.identity.public_key)
        d2 = self.a.connectEndpoint(self.endpoint, self.b.identity.public_key)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.complete()
        self.assertIs(self.successResultOf(d1), self.successResultOf(d2))

    def test_self(self) -> None:
        self.failureResultOf(
            self.a.connectEndpoint(self.endpoint, self.a.identity.public_key), ValueError
        )

    def test_wrong_key(self) -> None:
        d = self.a.connectEndpoint(self.endpoint, PrivateKey.from_int(99).public_key)
        self.complete()
        failure = self.failureResultOf(d, errors.HandshakeFailed)
        self.assertIn("wrong node ID", str(failure.value))

    def test_tcp_failure(self) -> None:
        from twisted.internet.error import ConnectionRefusedError

        d = self.a.connectEndpoint(self.endpoint, self.b.identity.public_key)
        _host, _port, factory, _timeout, _bind = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.failureResultOf(d, ConnectionRefusedError)
        # the dial is over: a new one may start
        self.a.connectEndpoint(self.endpoint, self.b.identity.public_key)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_cancel(self) -> None:
        d = self.a.connectEndpoint(self.endpoint, self.b.identity.public_key)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError, ConnectingCancelledError)


class SecretsTests(SynchronousTestCase):
    """
    WIRE.md section 4: the ephemeral private half goes as soon as the
    transport keys exist; nothing reachable from a live connection holds it,
    nor ss or okm (the cipher states hold only the current keys).
    """

    def reachable(self, root: object) -> list[object]:
        import gc
        import types

        skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
                types.CodeType, types.MethodType)
        seen: set[int] = set()
        out: list[object] = []
        stack: list[object] = [root]
        while stack:
            obj = stack.pop()
            if id(obj) in seen or isinstance(obj, skip):
                continue
            seen.add(id(obj))
            out.append(obj)
            stack.extend(gc.get_referents(obj))
        return out

    def test_no_ephemeral_secret_after_handshake(self) -> None:
        clock = Clock()
        a = PeerFactory(PrivateKey.from_int(A_SEED), protocol=Recorder, clock=clock)
        b = PeerFactory(PrivateKey.from_int(B_SEED), protocol=Recorder, clock=clock)
        i_e, r_e = PrivateKey.generate(), PrivateKey.generate()
        client = a.wrap(Initiator(a.identity, b.identity.public_key, ephemeral=i_e))
        server = b.wrap(Responder(b.identity, ephemeral=r_e))
        # what must not stay: the ephemeral secrets, and ss and okm
        forbidden = {i_e.secret_bytes(), r_e.secret_bytes()}
        Link(client, server, clock).flush()
        self.assertTrue(client.authenticated and server.authenticated)
        ss = i_e.ecdh(r_e.public_key)
        forbidden.add(ss)
        for proto, ephemeral in ((client, i_e), (server, r_e)):
            objects = self.reachable(proto)
            # the walk does reach the connection's live state
            self.assertIn(proto.connection, objects)
            self.assertIn(proto.connection._send, objects)
            keys = [o for o in objects if isinstance(o, PrivateKey)]
            self.assertNotIn(ephemeral, keys)
            # only static identities remain
            self.assertLessEqual(
                {k.public_key for k in keys}, {a.identity.public_key, b.identity.public_key}
            )
            secrets = [o for o in objects if isinstance(o, bytes) and o in forbidden]
            self.assertEqual(secrets, [])
            self.assertIsNone(proto.connection.keys)
            self.assertIsNone(proto.connection._ephemeral)


class EndpointTests(SynchronousTestCase):
    def test_client_endpoint(self) -> None:
        """Plain TCP for an IP literal; name resolution only for a name."""
        from twisted.internet.endpoints import (
            HostnameEndpoint,
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
        )

        from botd2.keys import PeerAddress
        from botd2.protocol import clientEndpoint

        key = PrivateKey.from_int(5).public_key
        reactor = MemoryReactorClock()
        for host, cls in (
            ("127.0.0.1", TCP4ClientEndpoint),
            ("::1", TCP6ClientEndpoint),
            ("localhost", HostnameEndpoint),
        ):
            endpoint = clientEndpoint(reactor, PeerAddress(key, host, 1), timeout=3)
            self.assertIsInstance(endpoint, cls, host)


class CipherSweepTests(SynchronousTestCase):
    def test_idle_connections_shed_ciphers(self) -> None:
        """
        An idle connection drops its AESGCM objects within two sweep periods;
        a busy one keeps them; the next frame makes them again.
        """
        from botd2.protocol import CIPHER_SWEEP_INTERVAL

        clock = Clock()
        a, b = node(A_SEED, clock), node(B_SEED, clock)
        link = dial(a, b)
        app(link.client).sendMessage(StringValue(value="x"))
        link.flush()
        send = link.client.connection._send
        recv = link.server.connection._recv
        assert send is not None and recv is not None
        self.assertIsNotNone(send._aead)
        for _ in range(3):  # busy: a frame in every period
            clock.advance(CIPHER_SWEEP_INTERVAL)
            app(link.client).sendMessage(StringValue(value="y"))
            link.flush()
            self.assertIsNotNone(send._aead)
            self.assertIsNotNone(recv._aead)
        for _ in range(2):  # idle for two periods
            clock.advance(CIPHER_SWEEP_INTERVAL)
        self.assertIsNone(send._aead)
        self.assertIsNone(recv._aead)
        app(link.client).sendMessage(StringValue(value="z"))
        link.flush()
        self.assertEqual(textsOf(link.server)[-1], "z")

    def test_sweep_stops_with_the_last_connection(self) -> None:
        clock = Clock()
        a, b = node(A_SEED, clock), node(B_SEED, clock)
        link = dial(a, b)
        self.assertIsNotNone(a._sweep)
        app(link.client).disconnect()
        link.flush()
        self.assertIsNone(a._sweep)
        self.assertIsNone(b._sweep)



class PartialFrameBudgetTests(SynchronousTestCase):
    """
    All connections together hold at most C{maxPartialBytes} of frames not
    yet whole; beyond, the connection whose last whole frame is the oldest
    gets an Error and is closed.
    """

    KIB = 1024

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = node(B_SEED, self.clock, maxPartialBytes=600 * self.KIB)
        self.links = [dial(node(seed, self.clock), self.server) for seed in (11, 12, 13, 14)]
        for link in self.links:
            self.assertTrue(link.server.authenticated)

    def frame(self, link: Link, size: int) -> bytes:
        """A real transport frame from the client of C{link}, C{size} bytes of value."""
        link.client.connection.send_payload(StringValue(value="x" * size))
        return b"".join(link.client.connection.take_output())

    def lostWith(self, link: Link) -> str | None:
        reasons = app(link.server).lost
        return str(reasons[0].value) if reasons else None

    def test_stalest_closed(self) -> None:
        frames = [self.frame(link, 300 * self.KIB) for link in self.links]
        for link, data in zip(self.links[:3], frames[:3], strict=True):
            link.server.dataReceived(data[: 200 * self.KIB])  # 600 KiB held: at the budget
        self.assertEqual(self.server._partialBytes, 600 * self.KIB)
        self.assertEqual([self.lostWith(link) for link in self.links], [None] * 4)
        self.links[3].server.dataReceived(frames[3][:200 * self.KIB])
        # The first to stall is closed, with an Error, and its bytes freed.
        first = self.links[0]
        self.assertTrue(first.server.disconnecting)
        self.assertEqual(first.server.connection.buffered, 0)
        self.assertEqual(self.server._partialBytes, 600 * self.KIB)
        first.flush()
        clientLost = app(first.client).lost
        self.assertIsInstance(clientLost[0].value, errors.PeerError)
        self.assertIn("partial frames", clientLost[0].value.message)
        self.assertIn("partial frames", self.lostWith(first) or "")
        for link in self.links[1:]:
            self.assertFalse(link.server.disconnecting)
        # The others finish their frames: delivered, and nothing is held.
        for link, data in zip(self.links[1:], frames[1:], strict=True):
            link.server.dataReceived(data[200 * self.KIB:])
            self.assertEqual(len(app(link.server).messages), 1)
        self.assertEqual((self.server._partial, self.server._partialBytes), ({}, 0))

    def test_progress_moves_to_the_back(self) -> None:
        """A connection that completes a frame is no longer the stalest."""
        a, b, c = self.links[:3]
        a1, a2 = self.frame(a, 300 * self.KIB), self.frame(a, 300 * self.KIB)
        a.server.dataReceived(a1[: 250 * self.KIB])
        b.server.dataReceived(self.frame(b, 300 * self.KIB)[: 250 * self.KIB])
        # a completes its first frame and starts the next one: b is now the stalest.
        a.server.dataReceived(a1[250 * self.KIB:] + a2[: 250 * self.KIB])
        self.assertEqual(len(app(a.server).messages), 1)
        c.server.dataReceived(self.frame(c, 300 * self.KIB)[: 250 * self.KIB])
        self.assertTrue(b.server.disconnecting)
        self.assertFalse(a.server.disconnecting)
        self.assertFalse(c.server.disconnecting)
        self.assertEqual(self.server._partialBytes, 500 * self.KIB)

    def test_small_partials_not_counted(self) -> None:
        """Below 64 KiB a partial frame is not tracked; a close forgets the bytes."""
        link = self.links[0]
        data = self.frame(link, 300 * self.KIB)
        link.server.dataReceived(data[: 60 * self.KIB])
        self.assertEqual(self.server._partial, {})
        link.server.dataReceived(data[60 * self.KIB : 100 * self.KIB])
        self.assertEqual(self.server._partialBytes, 100 * self.KIB)
        link.server.transport.loseConnection()
        link.flush()
        self.assertEqual((self.server._partial, self.server._partialBytes), ({}, 0))

    def test_setting_checked(self) -> None:
        with self.assertRaises(ValueError):
            node(B_SEED, maxPartialBytes=0)
