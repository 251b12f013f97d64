"""
Fuzzing, the bounded CI run (C{fuzz/README.rst} has the long runs).

Every target of L{fuzz.oracles} gets Hypothesis inputs from
L{fuzz.strategies}: valid Inits, Acks and transport streams made with real
keys, mutated at the byte, frame and protobuf levels, plus random bytes,
split into reads in every way.  The oracles check each input against the
rules of WIRE.md and against the reference model L{fuzz.model}, read by read.

Hypothesis runs with C{derandomize=True}: the same examples on every run (no
example database), so CI is stable; the random, ever-changing search is
C{python -m fuzz.run}.  The model itself is checked here against upb and
botd2 on the cases where they must agree, and the oracles against planted
bugs, so that a quiet run means something.

No bug is known open (L{fuzz.oracles.KNOWN_BUGS}); the reproducers of the
one the fuzzer found, BUG-1, are regression tests below.
"""

from __future__ import annotations

import random

from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from botd2 import connection as connection_module
from botd2 import errors
from botd2.botd2_pb2 import Envelope
from botd2.connection import ConnectionFailed, NotReady
from botd2.frames import CipherState, ReceiveBuffer
from botd2.messages import split_payload
from botd2.protocol import PeerFactory
from fuzz import model, oracles, run, strategies
from fuzz.mutators import RandomChooser
from fuzz.pool import R_STATIC, _allow, frame, new_responder, pool
from fuzz.strategies import BufferCase, ConnCase, TwistedCase

_settings = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def examples(n: int) -> settings:
    return settings(_settings, max_examples=n)


def observe(case: SynchronousTestCase) -> EventLoggingObserver:
    """An EventLoggingObserver on the global log publisher for the test's duration."""
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return observer


class FuzzTargetTests(SynchronousTestCase):
    """The properties of L{fuzz.oracles}, one test per target."""

    @examples(600)
    @given(case=strategies.responder_cases())
    def test_responder(self, case: ConnCase) -> None:
        """A responder fed mutated Inits and what follows: model, WIRE.md rules."""
        oracles.check("responder", case)

    @examples(500)
    @given(case=strategies.initiator_cases())
    def test_initiator(self, case: ConnCase) -> None:
        """An initiator fed mutated Acks and what follows."""
        oracles.check("initiator", case)

    @examples(600)
    @given(case=strategies.transport_cases())
    def test_transport(self, case: ConnCase) -> None:
        """A complete connection, either role, fed mutated transport frames."""
        oracles.check("transport", case)

    @examples(300)
    @given(case=strategies.buffer_cases())
    def test_buffer(self, case: BufferCase) -> None:
        """A ReceiveBuffer: any split gives the frames of the unsplit stream."""
        oracles.check("buffer", case)

    @examples(500)
    @given(case=strategies.twisted_cases())
    def test_twisted(self, case: TwistedCase) -> None:
        """
        BOTD2Protocol.dataReceived over a StringTransport: never raises, no
        traceback logged, open or cleanly closed.  Inputs that hit a bug
        listed in L{fuzz.oracles.KNOWN_BUGS} (none now) are skipped.
        """
        observer = EventLoggingObserver()
        globalLogPublisher.addObserver(observer)
        try:
            oracles.check("twisted", case)
        except oracles.Violation as v:
            if oracles.known_bug(v) is None:
                raise
            self.flushLoggedErrors(NotReady)
            reject()
        finally:
            globalLogPublisher.removeObserver(observer)
        self.assertEqual([e for e in observer if "log_failure" in e], [])

    def test_plain_loop(self) -> None:
        """L{fuzz.run}'s loop: every target runs, no violation but known ones."""
        echoed: list[str] = []
        stats, failures = run.run("all", 3000, seed=1, allow_known=True, echo=echoed.append)
        self.flushLoggedErrors(NotReady)
        self.assertEqual(failures, 0, "\n".join(echoed))
        self.assertEqual(sum(s.inputs for s in stats.values()), 3000)
        for target in strategies.TARGETS:
            self.assertGreater(stats[target].inputs, 0)
            unknown = [k for k in stats[target].violations if "[known:" not in k]
            self.assertEqual(unknown, [])


class ReproducerTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """Every kind of case survives C{reproducer()} and C{parse_reproducer}."""
        chooser = RandomChooser(random.Random(7))
        for target in strategies.TARGETS:
            for _ in range(20):
                case = strategies.generate(target, chooser)
                parsed_target, parsed = strategies.parse_reproducer(case.reproducer())
                self.assertEqual(parsed.reproducer(), case.reproducer())
                self.assertEqual(parsed_target, target)


# The model is checked too ------------------------------------------------------------


#: Envelopes at the edges of the proto3 format and of upb's limits.
WIRE_EDGES = [
    b"",
    b"\x00\x01",  # field 0
    b"\x02\x00",
    b"\x8a\x80\x80\x80\x00\x00",  # 5-byte tag: upb's longest
    b"\x8a\x80\x80\x80\x80\x00\x00",  # 6-byte tag
    b"\xf8\xff\xff\xff\x1f\x00",  # tag beyond 32 bits
    b"\xf8\xff\xff\xff\x0f\x00",  # field 2**29 - 1
    b"\x0c",  # end group outside a group
    b"\x3b\x08\x01\x3c",  # a group, skipped
    b"\x3b\x08\x01\x44",  # mismatched end group
    b"\x3b\x08\x01",  # unterminated group
    b"\x3b\x00\x00\x3c",  # field 0 inside an unknown group: upb accepts it
    b"\x3e",  # wire type 6
    b"\x3f",  # wire type 7
    b"\x08\x05",  # init with the wrong wire type: unknown
    b"\x0b\x0a\x00\x0c",  # init as a group: unknown
    b"\x0a\x03\x0a\x01a\x12\x03\x0a\x01b\x0a\x05\x12\x03xyz",  # init, ack, init
    b"\x0a\x03\x0a\x01a\x0a\x05\x12\x03xyz",  # init merged
    b"\x1a\x03\x0a\x01\xff",  # bad UTF-8
    b"\x1a\x05\x0a\x03\xed\xa0\x80",  # a surrogate in UTF-8
    b"\x1a\x04\x0a\x02\xc0\x80",  # overlong UTF-8
    b"\x38" + b"\xff" * 9 + b"\x7f",  # 10-byte varint
    b"\x38" + b"\xff" * 10 + b"\x01",  # 11-byte varint
    b"\x3a\xff\xff\xff\xff\x0f",  # length beyond the data
    b"\x1a\x80\x80\x80\x80\x00",  # 5-byte length
    b"\x1a\x80\x80\x80\x80\x80\x00",  # 6-byte length
    b"\x32\x03\x0a\x01a\x32\x03\x12\x01b",  # payload merged
    b"\x32\x03\x0a\x01\xff",  # bad type URL
    b"\x1a\x01\x0c",  # end group inside a Ping
    b"\x3b" * 100 + b"\x3c" * 100,  # 100 nested groups: upb's limit
    b"\x3b" * 101 + b"\x3c" * 101,
    b"\x0a\x63" + b"\x3b" * 99 + b"\x3c" * 99,  # 99 inside an Init
    b"\x0a\x64\x3b" + b"\x3b" * 99 + b"\x3c" * 99 + b"\x3c",
]


def upb_view(data: bytes) -> tuple[object, ...]:
    """What upb makes of an Envelope: the body set and its fields, or an error."""
    try:
        envelope = Envelope.FromString(data)
    except DecodeError:
        return ("error",)
    kind = envelope.WhichOneof("body")
    if kind is None:
        return (None,)
    body = getattr(envelope, kind)
    return (kind, tuple(sorted((f.name, v) for f, v in body.ListFields())))


def model_view(data: bytes) -> tuple[object, ...]:
    try:
        envelope = model.parse_envelope(data)
    except model.WireError:
        return ("error",)
    if envelope.kind is None:
        return (None,)
    fields = tuple(sorted((k, v) for k, v in envelope.body.items() if v not in ("", b"")))
    return (envelope.kind, fields)


class ModelTests(SynchronousTestCase):
    def test_wire_edges(self) -> None:
        """The model parses every edge case as upb does."""
        for data in WIRE_EDGES:
            self.assertEqual(model_view(data), upb_view(data), data.hex())

    @examples(1000)
    @given(envelope=strategies.envelopes())
    def test_parser_differential(self, envelope: bytes) -> None:
        """On the Envelopes of the generators (valid or mutated), model and upb agree."""
        self.assertEqual(model_view(envelope), upb_view(envelope), envelope.hex())

    @examples(1000)
    @given(data=st.binary(max_size=64))
    def test_parser_differential_bytes(self, data: bytes) -> None:
        """On arbitrary bytes, model and upb agree."""
        self.assertEqual(model_view(data), upb_view(data), data.hex())

    def test_cipher_across_rekeys(self) -> None:
        """The model's frames are botd2's over 2,500 frames (two rekeys)."""
        key = bytes(range(32))
        ours, theirs = model.Direction(key), CipherState(key)
        for n in range(2500):
            self.assertEqual(ours.seal(bytes([n % 256])), theirs.seal_frame(bytes([n % 256])))

    def test_pool(self) -> None:
        """
        botd2 refuses each bad Init and Ack of the pool with the code the
        model gives (the pool's own handshakes were checked on building it).
        """
        p = pool()
        for body, code in p.bad_inits:
            (failed,) = new_responder().receive_data(frame(body))
            assert isinstance(failed, ConnectionFailed)
            self.assertEqual(failed.code, code)
        for body, code in p.bad_acks:
            case = ConnCase("initiator", b"", frame(body))
            self.assertEqual(oracles.check("initiator", case).split(":")[1], code)


class OracleTeethTests(SynchronousTestCase):
    """Bugs planted in botd2 are caught: a quiet run means something."""

    def responder_case(self, tail: bytes) -> ConnCase:
        hs = pool().to_responder[0]
        return ConnCase("responder", b"", hs.init + tail)

    def test_ack_sent_on_failure(self) -> None:
        """
        A responder that writes through (what it queues goes out even if the
        read then fails before completion): its Ack leaks.
        """
        wire: list[bytes] = []
        real_queue = connection_module.Connection._queue

        def queue(self: connection_module.Connection, header: bytes, body: bytes) -> None:
            wire.append(header + body)
            real_queue(self, header, body)

        def data_to_send(self: connection_module.Connection) -> bytes:
            self.take_output()
            out = b"".join(wire)
            wire.clear()
            return out

        self.patch(connection_module.Connection, "_queue", queue)
        self.patch(connection_module.Connection, "data_to_send", data_to_send)
        case = self.responder_case(bytes(20))
        v = self.assertRaises(oracles.Violation, oracles.check, "responder", case)
        self.assertIn("queued output on a failure (bad_length) before", v.summary)

    def test_wrong_payload(self) -> None:
        """A payload fast path that loses a byte."""

        def lossy(envelope: bytes) -> object:
            result = split_payload(envelope)
            return None if result is None else (result[0], result[1][1:])

        self.patch(connection_module, "split_payload", lossy)
        hs = pool().to_responder[0]
        direction = model.Direction(hs.k_ir)
        plaintext = strategies.envelope(6, [(1, b"u"), (2, b"value")])
        stream = direction.seal(b"") + direction.seal(plaintext)
        case = self.responder_case(stream)
        v = self.assertRaises(oracles.Violation, oracles.check, "responder", case)
        self.assertEqual(v.summary, "botd2 gave payload where the model gives payload")

    def test_buffer_losing_a_byte(self) -> None:
        """A ReceiveBuffer whose compact() drops a byte too many."""
        real = ReceiveBuffer.compact

        def lossy(self: ReceiveBuffer) -> None:
            if self._pos:
                self._pos += 1
            real(self)

        self.patch(ReceiveBuffer, "compact", lossy)
        case = BufferCase(frame(b"ab") + frame(b"cd"), (7,))
        v = self.assertRaises(oracles.Violation, oracles.check, "buffer", case)
        self.assertEqual(v.summary, "len(buffer) is not the unconsumed byte count")

    def test_completing_with_a_replayed_init(self) -> None:
        """A responder that completes on a frame that does not decrypt."""
        self.patch(CipherState, "open", lambda self, header, body: b"")
        case = self.responder_case(bytes.fromhex("00000010") + bytes(16))
        v = self.assertRaises(oracles.Violation, oracles.check, "responder", case)
        self.assertEqual(v.summary, "botd2 gave complete where the model gives failed:bad_tag")


# BUG-1, fixed ------------------------------------------------------------------------


class ClosedByALaterFrameTests(SynchronousTestCase):
    """
    BUG-1, found by the fuzzer: the Twisted layer handles the events of a
    read after the sans-IO connection was closed by a later frame of that
    read; it used to raise NotReady, log tracebacks and drop Errors.
    """

    def observe(self) -> EventLoggingObserver:
        return observe(self)

    def open_protocol(self) -> tuple[object, StringTransport, bytes, model.Direction]:
        hs = pool().to_responder[0]
        clock = Clock()
        factory = PeerFactory(
            R_STATIC, protocol=oracles.FuzzApp, reactor=clock, clock=clock, allow=_allow
        )
        proto = factory.wrap(new_responder())
        transport = StringTransport()
        proto.makeConnection(transport)
        direction = model.Direction(hs.k_ir)
        direction.seal(b"")
        return proto, transport, hs.init + hs.confirmation, direction

    def test_ping_then_bad_frame(self) -> None:
        """
        A Ping and a frame with a bad tag in one read: no Pong can go any
        more; the connection closes for the bad tag, nothing raised.
        """
        proto, transport, setup, direction = self.open_protocol()
        proto.dataReceived(setup)  # type: ignore[attr-defined]
        ping = direction.seal(strategies.envelope(3, [(1, b"p")]))
        garbage = bytes.fromhex("00000010") + bytes(16)
        proto.dataReceived(ping + garbage)  # type: ignore[attr-defined]
        self.assertTrue(transport.disconnecting)
        reason = proto._reason  # type: ignore[attr-defined]
        self.assertIsInstance(reason, errors.ProtocolViolation)


    def test_greeting_then_bad_frame(self) -> None:
        """
        The Init, the key confirmation and a frame with a bad tag in one read:
        the application's greeting from peerAuthenticated is dropped, not an
        application error with a traceback; the connection ends for the
        protocol error.
        """
        proto, _, setup, _ = self.open_protocol()
        observer = self.observe()
        garbage = bytes.fromhex("00000010") + bytes(16)
        proto.dataReceived(setup + garbage)  # type: ignore[attr-defined]
        self.flushLoggedErrors(NotReady)
        self.assertEqual([e["log_format"] for e in observer if "log_failure" in e], [])
        reason = proto._reason  # type: ignore[attr-defined]
        self.assertIsInstance(reason, errors.ProtocolViolation)


    def test_bad_payload_then_bad_frame(self) -> None:
        """
        A payload that does not parse and a frame holding no valid Envelope
        in one read: both are protocol errors after completion, for which
        WIRE.md section 5 asks for an Error: exactly one is sent.
        """
        proto, transport, setup, direction = self.open_protocol()
        proto.dataReceived(setup)  # type: ignore[attr-defined]
        before = len(transport.value())
        bad_payload = strategies.envelope(
            6, [(1, strategies.STRING_VALUE_URL), (2, b"\x0a\x01\xff")]
        )
        stream = direction.seal(bad_payload) + direction.seal(b"\x00")  # field number 0
        proto.dataReceived(stream)  # type: ignore[attr-defined]
        written = transport.value()[before:]
        hs = pool().to_responder[0]
        ours = model.Direction(hs.k_ri)
        ours.seal(b"")  # the greeting of peerAuthenticated took counter 0
        kinds = []
        for start, end in model.frames_of(written):
            plaintext = ours.open(written[start : start + 4], written[start + 4 : end])
            assert plaintext is not None
            kinds.append(model.parse_envelope(plaintext).kind)
        self.assertEqual(kinds, ["error"])

