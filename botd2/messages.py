# -*- test-case-name: tests.test_messages -*-
"""
Envelopes, ids and application payloads (WIRE.md section 3).

Application messages are any protobuf messages, packed in
C{google.protobuf.Any} as C{Envelope.payload}.  A L{PayloadTypes} registry
maps the type URLs an application handles to its message classes; a payload
of any other type is ignored, not an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Final

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from botd2.botd2_pb2 import Envelope

__all__ = [
    "Envelope",
    "MAX_ERROR_MESSAGE",
    "MAX_ID_BYTES",
    "PayloadTypes",
    "new_id",
    "is_valid_id",
    "parse_envelope",
    "truncate_error_message",
    "printable_error_message",
]

#: Ids are 1..64 bytes of UTF-8 (WIRE.md section 3, "Ids").
MAX_ID_BYTES: Final = 64
#: C{Error.message} is at most 256 bytes of UTF-8.
MAX_ERROR_MESSAGE: Final = 256
TYPE_URL_PREFIX: Final = "type.googleapis.com/"


_id_pool: list[bytes] = []


def new_id() -> str:
    """
    A fresh random UUID4 in canonical text form, as every id we send.

    The 16 random bytes come from the OS in batches: C{uuid.uuid4()} makes
    one system call per id, which showed in the handshake's profile.
    """
    if not _id_pool:
        batch = os.urandom(16 * 64)
        _id_pool.extend(batch[i : i + 16] for i in range(0, len(batch), 16))
    return _uuid4_text(_id_pool.pop())


def _uuid4_text(random16: bytes) -> str:
    """RFC 4122 version 4 from 16 random bytes, canonical text (as C{uuid})."""
    b = bytearray(random16)
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # variant RFC 4122
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_valid_id(value: str) -> bool:
    """Is C{value} an id a receiver must accept (1..64 bytes of UTF-8)?"""
    # A str of more than 64 characters is more than 64 bytes; skip encoding it.
    return 0 < len(value) <= MAX_ID_BYTES and len(value.encode("utf-8")) <= MAX_ID_BYTES


def parse_envelope(body: bytes) -> Envelope:
    """
    Parse a serialized Envelope by the proto3 rules of WIRE.md section 3.

    @raise DecodeError: truncated fields, field number 0, invalid UTF-8 in a
        string, ...
    """
    return Envelope.FromString(body)


def truncate_error_message(message: str) -> str:
    """Cut C{message} to at most 256 bytes of UTF-8, on a character boundary."""
    data = message.encode("utf-8")
    if len(data) <= MAX_ERROR_MESSAGE:
        return message
    return data[:MAX_ERROR_MESSAGE].decode("utf-8", "ignore")


def printable_error_message(message: str) -> str:
    """
    What a node logs of a received C{Error.message}: its first 256 bytes,
    control characters escaped (WIRE.md section 3).
    """
    message = truncate_error_message(message)
    if message.isprintable():
        return message
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        for ch in message
    )


class PayloadTypes:
    """
    The application message classes a protocol handles, by type URL.

    """

    def __init__(self, classes: Iterable[type[Message]] = ()) -> None:
        #: type URL -> message class
        self.classes: dict[str, type[Message]] = {}
        for cls in classes:
            self.register(cls)

    def register(self, cls: type[Message]) -> None:
        self.classes[TYPE_URL_PREFIX + cls.DESCRIPTOR.full_name] = cls

    def __contains__(self, cls: type[Message]) -> bool:
        return self.classes.get(TYPE_URL_PREFIX + cls.DESCRIPTOR.full_name) is cls

    def unpack(self, payload: any_pb2.Any) -> Message | None:
        """
        The message in C{payload}, or C{None} if its type is not handled.

        @raise DecodeError: the type is handled but the bytes do not parse.
        """
        return self.unpack_value(payload.type_url, payload.value)

    def unpack_value(self, type_url: str, value: bytes | memoryview) -> Message | None:
        """As L{unpack}, from the two fields of the C{Any}."""
        cls = self.classes.get(type_url)
        if cls is None:
            return None
        return cls.FromString(value)  # type: ignore[arg-type]  # upb takes any buffer


def pack(message: Message) -> any_pb2.Any:
    """Pack an application message for C{Envelope.payload}."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


# The payload fast paths ------------------------------------------------------
#
# Nearly every frame of a busy connection is an Envelope{payload}.  The
# generic protobuf route packs the message into an Any, copies the Any into
# an Envelope and serializes that: three copies of the message bytes.  Here
# the Envelope is written directly, canonically (fields in order, defaults
# left out), which is byte for byte what protobuf writes:
#
#     Envelope.payload (field 6, bytes)  0x32 varint(len(any)) any
#     Any.type_url     (field 1, string) 0x0a varint(len(url)) url   (if url)
#     Any.value        (field 2, bytes)  0x12 varint(len(value)) value (if value)
#
# and read back the same way when the Envelope has exactly that shape; any
# other encoding (unknown fields, repeats, another order) goes to protobuf.

_VARINT1: Final = [bytes((n,)) for n in range(0x80)]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _VARINT1[n]
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """A varint at C{pos}: (value, next position); (-1, end) if malformed."""
    result = shift = 0
    while pos < end and shift < 35:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    return -1, end


#: (message class, value length) -> every byte before the value: streams of
#: one type and size (the common case) build their header once.
_HEADS: dict[tuple[type[Message], int], bytes] = {}


def encode_payload(message: Message) -> bytes:
    """The serialized C{Envelope{payload = Any(message)}}, canonically."""
    value = message.SerializeToString()
    key = (type(message), len(value))
    head = _HEADS.get(key)
    if head is None:
        head = _payload_head(type(message), len(value))
        if len(_HEADS) >= 1024:
            _HEADS.clear()
        _HEADS[key] = head
    return head + value


def _payload_head(cls: type[Message], n: int) -> bytes:
    name = (TYPE_URL_PREFIX + cls.DESCRIPTOR.full_name).encode("utf-8")
    url = b"\x0a" + _varint(len(name)) + name
    if not n:  # an empty value is left out, as protobuf does
        return b"\x32" + _varint(len(url)) + url
    value_head = b"\x12" + _varint(n)
    return b"\x32" + _varint(len(url) + len(value_head) + n) + url + value_head


#: Values shorter than this are copied out of the decrypted frame; longer
#: ones are views into it (a small copy is cheaper than a view).
COPY_BELOW: Final = 4096

#: Envelope length -> (every byte before the value, type URL) of the last
#: canonical payload Envelope of that length split: the receive side's
#: counterpart of L{_HEADS}.
_SPLITS: dict[int, tuple[bytes, str]] = {}
#: The longest header kept in L{_SPLITS} (a type URL of some 500 bytes).
_SPLIT_HEAD_MAX: Final = 512


def split_payload(envelope: bytes) -> tuple[str, bytes | memoryview] | None:
    """
    The type URL and value of a canonical C{Envelope{payload}}, without
    copying a large value (a view into C{envelope}); C{None} when the bytes
    have any other shape (then protobuf parses them, and decides).
    """
    end = len(envelope)
    hit = _SPLITS.get(end)
    if hit is not None and envelope.startswith(hit[0]):
        # The header of an earlier Envelope of this length, already parsed:
        # same bytes, same parse.  (Streams of one type and size hit.)
        start = len(hit[0])
        if end - start < COPY_BELOW:
            return hit[1], envelope[start:]
        return hit[1], memoryview(envelope)[start:]
    if end < 2 or envelope[0] != 0x32:
        return None
    size = envelope[1]
    if size < 0x80:
        pos = 2
    elif end > 2 and envelope[2] < 0x80:  # two bytes: a payload of 128 B to 16 KiB
        size = (size & 0x7F) | (envelope[2] << 7)
        pos = 3
    else:
        size, pos = _read_varint(envelope, 1, end)
    if pos + size != end:
        return None
    url = ""
    if pos < end and envelope[pos] == 0x0A:
        n = envelope[pos + 1] if pos + 1 < end else 0x80
        if n < 0x80:
            start = pos + 2
        else:
            n, start = _read_varint(envelope, pos + 1, end)
        pos = start + n
        if n < 0 or pos > end:
            return None
        try:
            url = envelope[start:pos].decode("utf-8")
        except UnicodeDecodeError:
            return None
    if pos == end:
        return url, memoryview(b"")
    if envelope[pos] != 0x12:
        return None
    n = envelope[pos + 1] if pos + 1 < end else 0x80
    if n < 0x80:
        start = pos + 2
    else:
        n, start = _read_varint(envelope, pos + 1, end)
    pos = start + n
    if n < 0 or pos != end:
        return None
    if start <= _SPLIT_HEAD_MAX:
        # Only short headers: a peer picks the type URL, and 1,024 entries of
        # 1 MiB URLs would pin 2 GiB for the life of the process.
        if len(_SPLITS) >= 1024:
            _SPLITS.clear()
        _SPLITS[end] = (envelope[:start], url)
    if n < COPY_BELOW:
        return url, envelope[start:pos]
    return url, memoryview(envelope)[start:pos]


__all__ += ["DecodeError", "pack", "TYPE_URL_PREFIX", "encode_payload", "split_payload"]
