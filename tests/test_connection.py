"""
The sans-IO connection (WIRE.md sections 2 to 5) without a reactor: what
each rule makes the state machine emit and send.
"""

from __future__ import annotations

from google.protobuf.wrappers_pb2 import StringValue
from twisted.trial.unittest import SynchronousTestCase

from botd2.botd2_pb2 import Ack, Envelope, Error, Init, Ping, Pong
from botd2.connection import (
    ConnectionFailed,
    ErrorReceived,
    HandshakeComplete,
    Initiator,
    MessageTooLarge,
    NotReady,
    PayloadReceived,
    PingReceived,
    PongReceived,
    Responder,
    State,
)
from botd2.frames import MAX_MESSAGE, CipherState, encode_length
from botd2.keys import PrivateKey, PublicKey
from botd2.messages import parse_envelope

I_KEY = PrivateKey.from_int(0x1111)
R_KEY = PrivateKey.from_int(0x2222)


def handshake(
    initiator: Initiator | None = None, responder: Responder | None = None
) -> tuple[Initiator, Responder]:
    """Run a whole handshake in memory; both ends open."""
    i = initiator or Initiator(I_KEY, R_KEY.public_key)
    r = responder or Responder(R_KEY)
    i.initiate()
    assert r.receive_data(i.data_to_send()) == []
    events = i.receive_data(r.data_to_send())
    assert isinstance(events[0], HandshakeComplete)
    events = r.receive_data(i.data_to_send())
    assert isinstance(events[0], HandshakeComplete), events
    return i, r


def decrypt_all(cipher: CipherState, data: bytes) -> list[Envelope]:
    """Decrypt frames with a copy of the peer's receive state."""
    out = []
    while data:
        n = int.from_bytes(data[:4], "big")
        out.append(parse_envelope(cipher.open(data[:4], data[4 : 4 + n])))
        data = data[4 + n :]
    return out


class HandshakeTests(SynchronousTestCase):
    def test_complete_both_sides(self) -> None:
        i, r = handshake()
        self.assertEqual(i.peer, R_KEY.public_key)
        self.assertEqual(r.peer, I_KEY.public_key)
        self.assertTrue(i.handshake_complete and r.handshake_complete)
        assert i.keys and r.keys
        self.assertEqual(i.keys, r.keys)

    def test_ephemeral_secret_dropped(self) -> None:
        """WIRE.md section 4: the ephemeral private half goes once the keys exist."""
        i = Initiator(I_KEY, R_KEY.public_key)
        r = Responder(R_KEY)
        # made when needed: a stranger that never sends an Init costs no keygen
        self.assertIsNone(r._ephemeral)
        i.initiate()
        self.assertIsNotNone(i._ephemeral)
        r.receive_data(i.data_to_send())
        # the responder derived its keys when it sent the Ack
        self.assertIsNone(r._ephemeral)
        self.assertIsNone(r._handshake_body)
        i.receive_data(r.data_to_send())
        self.assertIsNone(i._ephemeral)
        self.assertIsNone(i._handshake_body)
        for side in (i, r):
            secrets = [v for v in vars(side).values() if isinstance(v, PrivateKey)]
            self.assertEqual(secrets, [side.static])

    def test_responder_not_complete_before_confirmation(self) -> None:
        """A replayed Init completes nothing: without i_e no frame decrypts."""
        i = Initiator(I_KEY, R_KEY.public_key)
        i.initiate()
        init = i.data_to_send()
        r1 = Responder(R_KEY)
        self.assertEqual(r1.receive_data(init), [])
        self.assertIs(r1.state, State.AWAIT_CONFIRMATION)
        self.assertFalse(r1.handshake_complete)
        self.assertNotEqual(r1.data_to_send(), b"")  # the Ack
        # an attacker replaying the Init cannot make the confirmation frame
        forged = CipherState(bytes(32)).seal_frame(b"")
        events = r1.receive_data(forged)
        self.assertEqual([type(e) for e in events], [ConnectionFailed])
        self.assertEqual(r1.data_to_send(), b"")

    def test_failure_before_complete_drops_queued_ack(self) -> None:
        """Init and a bad frame in one read: the close sends nothing, not even the Ack."""
        i = Initiator(I_KEY, R_KEY.public_key)
        i.initiate()
        r = Responder(R_KEY)
        events = r.receive_data(i.data_to_send() + CipherState(bytes(32)).seal_frame(b""))
        self.assertEqual([type(e) for e in events], [ConnectionFailed])
        self.assertEqual(r.data_to_send(), b"")

    def test_self_connection(self) -> None:
        i = Initiator(R_KEY, R_KEY.public_key)
        i.initiate()
        r = Responder(R_KEY)
        (event,) = r.receive_data(i.data_to_send())
        assert isinstance(event, ConnectionFailed)
        self.assertEqual(event.code, "self_connection")
        self.assertEqual(r.data_to_send(), b"")

    def test_allow_policy(self) -> None:
        seen: list[PublicKey] = []

        def allow(key: PublicKey) -> bool:
            seen.append(key)
            return False

        i = Initiator(I_KEY, R_KEY.public_key)
        i.initiate()
        r = Responder(R_KEY, allow=allow)
        (event,) = r.receive_data(i.data_to_send())
        assert isinstance(event, ConnectionFailed)
        self.assertEqual(event.code, "not_allowed")
        self.assertEqual(seen, [I_KEY.public_key])
        self.assertEqual(r.data_to_send(), b"")
        handshake(responder=Responder(R_KEY, allow=lambda k: k == I_KEY.public_key))

    def test_wrong_responder_key(self) -> None:
        """The initiator expected another key: the responder refuses the Init."""
        i = Initiator(I_KEY, PrivateKey.from_int(3).public_key)
        i.initiate()
        r = Responder(R_KEY)
        (event,) = r.receive_data(i.data_to_send())
        assert isinstance(event, ConnectionFailed)
        self.assertEqual(event.code, "wrong_recipient")

    def test_initiator_sends_nothing_before_ack(self) -> None:
        i = Initiator(I_KEY, R_KEY.public_key)
        self.assertRaises(NotReady, i.send_ping)
        self.assertRaises(NotReady, i.receive_data, b"x")
        i.initiate()
        i.data_to_send()
        self.assertRaises(NotReady, i.send_payload, StringValue(value="early"))
        self.assertRaises(NotReady, i.initiate)

    def test_responder_may_send_after_ack(self) -> None:
        """The responder may send transport frames right after its Ack."""
        i = Initiator(I_KEY, R_KEY.public_key)
        i.initiate()
        r = Responder(R_KEY)
        r.receive_data(i.data_to_send())
        r.send_payload(StringValue(value="early"))
        events = i.receive_data(r.data_to_send())
        self.assertEqual(type(events[0]), HandshakeComplete)
        assert isinstance(events[1], PayloadReceived)
        self.assertEqual(StringValue.FromString(events[1].payload.value).value, "early")

    def test_responder_sends_no_error_before_complete(self) -> None:
        """
        WIRE.md section 4: until its handshake is complete (a frame from the
        initiator decrypted) a node sends nothing on close, not even an
        Error, though it may already send transport frames after its Ack.
        """
        i = Initiator(I_KEY, R_KEY.public_key)
        i.initiate()
        r = Responder(R_KEY)
        r.receive_data(i.data_to_send())
        r.data_to_send()  # the Ack
        self.assertFalse(r.handshake_complete)
        r.send_error("going away")
        self.assertEqual(r.data_to_send(), b"")

    def test_error_read_with_the_ack(self) -> None:
        """
        An Error in the same read as the Ack: the initiator closes and sends
        nothing after it (WIRE.md section 5), and what the Ack made it queue,
        its key confirmation, goes as it would had the two come in two reads.
        """
        outputs = []
        for split in (False, True):
            i = Initiator(I_KEY, R_KEY.public_key)
            i.initiate()
            r = Responder(R_KEY)
            r.receive_data(i.data_to_send())
            ack = r.data_to_send()
            r.send_envelope(Envelope(error=Error(id="e", message="no")))
            error = r.data_to_send()
            if split:
                events = i.receive_data(ack)
                events += i.receive_data(error)
            else:
                events = i.receive_data(ack + error)
            self.assertEqual([type(e) for e in events], [HandshakeComplete, ErrorReceived])
            self.assertTrue(i.closed)
            outputs.append(i.data_to_send())
            self.assertEqual(i.data_to_send(), b"")
        # the key confirmation alone, both ways (fresh keys: other bytes)
        self.assertEqual([len(out) for out in outputs], [20, 20])

    def test_handshake_frame_length_limits(self) -> None:
        for length in (0, 1025, 2**32 - 1):
            r = Responder(R_KEY)
            (event,) = r.receive_data(encode_length(length))
            assert isinstance(event, ConnectionFailed)
            self.assertEqual(event.code, "bad_length")

    def test_keys_not_in_reprs(self) -> None:
        """Session secrets never show in a repr (a log line, a traceback)."""
        _, r = handshake()
        keys = r.keys
        assert keys is not None
        for secret in (keys.ss, keys.th, keys.okm):
            self.assertNotIn(secret.hex(), repr(keys))
            self.assertNotIn(repr(secret), repr(keys))

    def test_second_init_in_transport_phase(self) -> None:
        i, r = handshake()
        assert r.keys is not None  # (a close drops them)
        reader = CipherState(r.keys.k_ri)
        i.send_envelope(Envelope(init=Init(id="x")))
        (event,) = r.receive_data(i.data_to_send())
        assert isinstance(event, ConnectionFailed)
        self.assertEqual(event.code, "unexpected_message")
        self.assertIsNone(r.keys)
        # complete connection: an Error goes out before the close
        (error,) = decrypt_all(reader, r.data_to_send())
        self.assertEqual(error.WhichOneof("body"), "error")


class TransportTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.i, self.r = handshake()
        assert self.r.keys
        # a copy of the initiator's receive state, to read what r sends
        self.reader = CipherState(self.r.keys.k_ri)

    def sent_by_r(self) -> list[Envelope]:
        return decrypt_all(self.reader, self.r.data_to_send())

    def test_payload(self) -> None:
        self.i.send_payload(StringValue(value="hello"))
        (event,) = self.r.receive_data(self.i.data_to_send())
        assert isinstance(event, PayloadReceived)
        self.assertEqual(event.payload.type_url, "type.googleapis.com/google.protobuf.StringValue")

    def test_ping_pong(self) -> None:
        ping_id = self.i.send_ping()
        self.assertEqual(len(ping_id), 36)
        (event,) = self.r.receive_data(self.i.data_to_send())
        self.assertEqual(event, PingReceived(ping_id))
        self.r.send_pong(ping_id)
        (event,) = self.i.receive_data(self.r.data_to_send())
        assert isinstance(event, PongReceived)
        self.assertEqual(event.ping_id, ping_id)

    def test_bad_ids(self) -> None:
        for envelope in (
            Envelope(ping=Ping(id="")),
            Envelope(ping=Ping(id="x" * 65)),
            Envelope(pong=Pong(id="", ping_id="p")),
            Envelope(pong=Pong(id="\u00e9" * 33, ping_id="p")),
        ):
            i, r = handshake()
            assert r.keys
            reader = CipherState(r.keys.k_ri)
            i.send_envelope(envelope)
            (event,) = r.receive_data(i.data_to_send())
            assert isinstance(event, ConnectionFailed)
            self.assertEqual(event.code, "bad_id")
            (error,) = decrypt_all(reader, r.data_to_send())
            self.assertEqual(error.WhichOneof("body"), "error")

    def test_pong_ping_id_not_checked(self) -> None:
        """
        Pong.ping_id only refers to a Ping (WIRE.md section 3): any value,
        empty or longer than an id may be, is delivered, not an error.
        """
        for ping_id in ("", "x" * 65, "\u00e9" * 40):
            i, r = handshake()
            i.send_envelope(Envelope(pong=Pong(id="p", ping_id=ping_id)))
            (event,) = r.receive_data(i.data_to_send())
            self.assertEqual(event, PongReceived("p", ping_id))
            self.assertFalse(r.closed)

    def test_error_id_not_checked(self) -> None:
        """A receiver checks nothing in an Error but logs it and closes."""
        self.i.send_envelope(Envelope(error=Error(id="", message="bye\x1b[2J" + "x" * 300)))
        (event,) = self.r.receive_data(self.i.data_to_send())
        assert isinstance(event, ErrorReceived)
        self.assertTrue(event.message.startswith("bye\\x1b[2J"))
        self.assertEqual(len(event.message), 256 + 3)  # the escape adds 3 characters
        self.assertTrue(self.r.closed)
        self.assertEqual(self.r.data_to_send(), b"")

    def test_unknown_and_empty_envelopes_ignored(self) -> None:
        """No body, or a body from a newer version (an unknown field): ignored."""
        self.i.send_envelope_bytes(b"")
        self.i.send_envelope_bytes(b"\x3a\x02hi")  # field 7, length-delimited
        self.i.send_envelope_bytes(b"\x78\x01")  # field 15, varint
        self.assertEqual(self.r.receive_data(self.i.data_to_send()), [])
        self.assertFalse(self.r.closed)

    def test_unparsable_envelope(self) -> None:
        self.i.send_envelope_bytes(b"\xff" * 8)
        (event,) = self.r.receive_data(self.i.data_to_send())
        assert isinstance(event, ConnectionFailed)
        self.assertEqual(event.code, "parse_error")
        self.assertEqual(self.sent_by_r()[0].WhichOneof("body"), "error")

    def test_ack_in_transport_phase(self) -> None:
        self.i.send_envelope(Envelope(ack=Ack(id="a")))
        (event,) = self.r.receive_data(self.i.data_to_send())
        assert isinstance(event, ConnectionFailed)
        self.assertEqual(event.code, "unexpected_message")

    def test_bad_tag_closes_sending_nothing(self) -> None:
        self.i.send_payload(StringValue(value="x"))
        frame = bytearray(self.i.data_to_send())
        frame[-1] ^= 1
        (event,) = self.r.receive_data(bytes(frame))
        assert isinstance(event, ConnectionFailed)
        self.assertEqual(event.code, "bad_tag")
        self.assertEqual(self.r.data_to_send(), b"")
        self.assertTrue(self.r.closed)

    def test_transport_length_limits(self) -> None:
        """Below 16 or above 16 + max: Error, then close, on the length alone."""
        for length in (0, 15, 16 + MAX_MESSAGE + 1, 2**32 - 1):
            _i, r = handshake()
            assert r.keys
            reader = CipherState(r.keys.k_ri)
            (event,) = r.receive_data(encode_length(length))
            assert isinstance(event, ConnectionFailed)
            self.assertEqual(event.code, "bad_length")
            (error,) = decrypt_all(reader, r.data_to_send())
            self.assertEqual(error.WhichOneof("body"), "error")
            self.assertTrue(r.closed)

    def test_max_message_accepted(self) -> None:
        """A node MUST accept a plaintext of max_message bytes, and not send more."""
        # Envelope tag, 3-byte length, Any tag, 3-byte length: 8 bytes
        value = b"\0" * (MAX_MESSAGE - 8)
        envelope = Envelope()
        envelope.payload.value = value
        data = envelope.SerializeToString()
        self.assertEqual(len(data), MAX_MESSAGE)
        self.i.send_envelope_bytes(data)
        (event,) = self.r.receive_data(self.i.data_to_send())
        assert isinstance(event, PayloadReceived)
        self.assertRaises(MessageTooLarge, self.i.send_envelope_bytes, b"\0" * (MAX_MESSAGE + 1))

    def test_configured_larger_maximum(self) -> None:
        """A node MAY accept more than max_message when configured to."""
        envelope = Envelope()
        envelope.payload.value = b"\0" * (MAX_MESSAGE + 100)
        data = envelope.SerializeToString()
        for max_message, accepted in ((MAX_MESSAGE, False), (2 * MAX_MESSAGE, True)):
            i, r = handshake(responder=Responder(R_KEY, max_message=max_message))
            assert i._send
            # made by hand: send_envelope_bytes refuses to send it
            (event,) = r.receive_data(i._send.seal_frame(data))
            self.assertEqual(isinstance(event, PayloadReceived), accepted)
        self.assertRaises(ValueError, Responder, R_KEY, max_message=MAX_MESSAGE - 1)

    def test_send_error_then_closed(self) -> None:
        self.r.send_error("going away")
        (error,) = self.sent_by_r()
        self.assertEqual(error.error.message, "going away")
        self.assertEqual(len(error.error.id), 36)
        self.assertTrue(self.r.closed)
        self.assertRaises(NotReady, self.r.send_ping)
        self.assertEqual(self.r.receive_data(b"anything"), [])

    def test_send_error_truncated(self) -> None:
        self.r.send_error("\u00e9" * 200)
        (error,) = self.sent_by_r()
        self.assertEqual(len(error.error.message.encode()), 256)

    def test_send_error_before_complete_sends_nothing(self) -> None:
        i = Initiator(I_KEY, R_KEY.public_key)
        i.initiate()
        i.data_to_send()
        i.send_error("no")
        self.assertEqual(i.data_to_send(), b"")
        self.assertTrue(i.closed)

    def test_close_drops_buffer(self) -> None:
        self.r.receive_data(b"\0\0\0\x40partial")
        self.r.close()
        self.assertEqual(len(self.r._buffer), 0)
