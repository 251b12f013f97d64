# -*- test-case-name: tests.test_messages -*-
"""
Envelopes, ids and application payloads (WIRE.md section 3).

Application messages are any protobuf messages, packed in
C{google.protobuf.Any} as C{Envelope.payload}.  A L{PayloadTypes} registry
maps the type URLs an application handles to its message classes; a payload
of any other type is ignored, not an error.
"""

from __future__ import annotations

import uuid
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


def new_id() -> str:
    """A fresh random UUID4 in canonical text form, as every id we send."""
    return str(uuid.uuid4())


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
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        for ch in truncate_error_message(message)
    )


class PayloadTypes:
    """
    The application message classes a protocol handles, by type URL.

    @ivar _classes: type URL -> message class.
    """

    def __init__(self, classes: Iterable[type[Message]] = ()) -> None:
        self._classes: dict[str, type[Message]] = {}
        for cls in classes:
            self.register(cls)

    def register(self, cls: type[Message]) -> None:
        self._classes[TYPE_URL_PREFIX + cls.DESCRIPTOR.full_name] = cls

    def __contains__(self, cls: type[Message]) -> bool:
        return self._classes.get(TYPE_URL_PREFIX + cls.DESCRIPTOR.full_name) is cls

    def unpack(self, payload: any_pb2.Any) -> Message | None:
        """
        The message in C{payload}, or C{None} if its type is not handled.

        @raise DecodeError: the type is handled but the bytes do not parse.
        """
        cls = self._classes.get(payload.type_url)
        if cls is None:
            return None
        return cls.FromString(payload.value)


def pack(message: Message) -> any_pb2.Any:
    """Pack an application message for C{Envelope.payload}."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


__all__ += ["DecodeError", "pack", "TYPE_URL_PREFIX"]
