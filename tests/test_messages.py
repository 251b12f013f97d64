"""
Envelopes, ids and payloads (WIRE.md section 3), and the payload fast paths
checked against protobuf itself.
"""

from __future__ import annotations

from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import BytesValue, StringValue
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from botd2.botd2_pb2 import Envelope, Ping
from botd2.messages import (
    PayloadTypes,
    encode_payload,
    is_valid_id,
    new_id,
    printable_error_message,
    split_payload,
    truncate_error_message,
)

#: Sizes around each varint length boundary.
SIZES = [0, 1, 120, 127, 128, 129, 16383, 16384, 16385, 70000]


def canonical(message: BytesValue | StringValue) -> bytes:
    packed = any_pb2.Any()
    packed.Pack(message)
    return Envelope(payload=packed).SerializeToString()


class IdTests(SynchronousTestCase):
    def test_new_id(self) -> None:
        ident = new_id()
        self.assertEqual(len(ident), 36)
        self.assertEqual(ident, ident.lower())
        self.assertEqual(ident[14], "4")
        self.assertNotEqual(new_id(), ident)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(min_size=16, max_size=16))
    def test_uuid4_text_is_uuids(self, random16: bytes) -> None:
        """The fast formatting equals the uuid module's version 4 text."""
        import uuid

        from botd2.messages import _uuid4_text

        self.assertEqual(_uuid4_text(random16), str(uuid.UUID(bytes=random16, version=4)))

    def test_valid(self) -> None:
        for value, valid in (
            ("", False), ("x", True), ("x" * 64, True), ("x" * 65, False),
            ("\u00e9" * 32, True), ("\u00e9" * 33, False), ("\U0001f600" * 16, True),
            ("\U0001f600" * 17, False),
        ):
            self.assertEqual(is_valid_id(value), valid, value)


class SplitCacheTests(SynchronousTestCase):
    def test_long_type_urls_not_kept(self) -> None:
        """
        The cache of payload headers keeps short ones only: the peer picks
        the type URL, and long ones would pin memory for the process's life.
        """
        from botd2 import messages

        self.addCleanup(messages._SPLITS.clear)
        messages._SPLITS.clear()
        for url in ("t/" + "x" * 600, "t/" + "y" * 100_000):
            data = Envelope(payload=any_pb2.Any(type_url=url, value=b"v")).SerializeToString()
            split = split_payload(data)
            assert split is not None
            self.assertEqual((split[0], bytes(split[1])), (url, b"v"))
        self.assertEqual(messages._SPLITS, {})
        short = Envelope(payload=any_pb2.Any(type_url="t/ok", value=b"v")).SerializeToString()
        split_payload(short)
        self.assertEqual(list(messages._SPLITS), [len(short)])


class ErrorMessageTests(SynchronousTestCase):
    def test_truncate_on_character_boundary(self) -> None:
        text = "a" + "\u00e9" * 200
        cut = truncate_error_message(text)
        self.assertLessEqual(len(cut.encode()), 256)
        self.assertTrue(text.startswith(cut))
        self.assertEqual(truncate_error_message("short"), "short")

    def test_printable(self) -> None:
        self.assertEqual(printable_error_message("a\nb\x1b[0m\x00"), "a\\nb\\x1b[0m\\x00")


class PayloadFastPathTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.one_of(st.binary(max_size=300), st.sampled_from(SIZES).map(lambda n: b"v" * n)))
    def test_encode_is_protobufs_canonical_bytes(self, value: bytes) -> None:
        message = BytesValue(value=value)
        self.assertEqual(encode_payload(message), canonical(message))

    @settings(max_examples=100, deadline=None)
    @given(st.text(max_size=200))
    def test_encode_strings(self, value: str) -> None:
        message = StringValue(value=value)
        self.assertEqual(encode_payload(message), canonical(message))

    def test_split_round_trip(self) -> None:
        types = PayloadTypes([BytesValue])
        for n in SIZES:
            message = BytesValue(value=b"\x01" * n)
            split = split_payload(encode_payload(message))
            assert split is not None
            url, value = split
            self.assertEqual(url, "type.googleapis.com/google.protobuf.BytesValue")
            self.assertEqual(types.unpack_value(url, value), message)

    def test_other_shapes_left_to_protobuf(self) -> None:
        """Anything but the canonical shape returns None (protobuf decides)."""
        good = encode_payload(BytesValue(value=b"abc"))
        ping = Envelope(ping=Ping(id="x")).SerializeToString()
        for data in (
            b"",
            ping,
            good + b"\x00",  # trailing byte
            good[:-1],  # truncated
            good + good,  # payload twice: protobuf merges
            b"\x7a\x00" + good,  # an unknown field first
            good + b"\x7a\x00",  # an unknown field after
            b"\x32\x80\x80\x80\x80\x80\x01",  # an overlong varint
            b"\x32\x05\x0a\x03\xff\xfe\xfd",  # type URL not UTF-8
            b"\x32\x04\x12\x00\x0a\x00",  # value before type URL
        ):
            self.assertIsNone(split_payload(data), data)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=40))
    def test_split_agrees_with_protobuf(self, tail: bytes) -> None:
        """Whatever split_payload accepts, protobuf parses to the same payload."""
        for data in (b"\x32" + tail, b"\x32" + bytes([len(tail)]) + tail):
            split = split_payload(data)
            if split is None:
                continue
            envelope = Envelope.FromString(data)
            self.assertEqual(envelope.WhichOneof("body"), "payload")
            self.assertEqual(envelope.payload.type_url, split[0])
            self.assertEqual(envelope.payload.value, bytes(split[1]))

    def test_split_header_cache(self) -> None:
        """
        The header cache (one entry per Envelope length) never answers for
        bytes it did not parse: Envelopes of one length with other headers,
        and non-canonical bytes of a cached length, are split (or refused)
        as protobuf parses them; the cache stays bounded.
        """
        from botd2 import messages

        def expected(data: bytes) -> tuple[str, bytes]:
            payload = Envelope.FromString(data).payload
            return payload.type_url, payload.value

        b = encode_payload(BytesValue(value=b"x" * 100))
        # A StringValue Envelope of the same length (its URL is one byte longer).
        s = encode_payload(StringValue(value="y" * 99))
        self.assertEqual(len(s), len(b))
        for _ in range(3):
            for data in (b, s, b, b, s, s):
                self.assertEqual(split_payload(data), expected(data))
        # The same length, but the value's tag (0x12) changed: not canonical.
        tag = len(b) - 102 - 2
        self.assertEqual(b[tag], 0x12)
        self.assertIsNone(split_payload(b[:tag] + b"\x1a" + b[tag + 1:]))
        self.assertEqual(split_payload(b), expected(b))
        for n in range(2000):
            split_payload(encode_payload(BytesValue(value=b"z" * n)))
        self.assertLessEqual(len(messages._SPLITS), 1024)

    def test_unhandled_type(self) -> None:
        self.assertIsNone(PayloadTypes([StringValue]).unpack_value("type.googleapis.com/x", b""))
        self.assertIn(StringValue, PayloadTypes([StringValue]))
        self.assertNotIn(BytesValue, PayloadTypes([StringValue]))
