# -*- test-case-name: tests.test_frames -*-
"""
Frames and transport ciphers (WIRE.md sections 2 and 5).

The wire, step by step::

    frame     = length (4 bytes, unsigned, big-endian) || body (length bytes)
    handshake : body = a serialized Envelope in plaintext, length 1..1024
    transport : body = AES-256-GCM(key, nonce, Envelope, aad = the 4 length
                bytes) = ciphertext || 16-byte tag, length 16..16 + max_message
    nonce     = 4 zero bytes || c as 8 bytes big-endian
    c         = 0..999 under each key; after 1,000 frames the key becomes
                HKDF-SHA-256(IKM = key, salt = 32 zero bytes,
                             info = "botd2/1 rekey", L = 32) and c restarts

A L{CipherState} is one direction of that; a L{ReceiveBuffer} holds the bytes
of the frame being received.  Both are pure: bytes in, bytes out.
"""

from __future__ import annotations

import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

LENGTH_SIZE: Final = 4
TAG_SIZE: Final = 16
#: Handshake frame bodies are 1..1024 bytes (WIRE.md section 2).
HANDSHAKE_MAX_LENGTH: Final = 1024
#: The largest plaintext Envelope a node may send, and must accept.
MAX_MESSAGE: Final = 1_048_576
#: Frames under one key before it is replaced (WIRE.md section 5).
REKEY_AFTER: Final = 1000

REKEY_INFO: Final = b"botd2/1 rekey"
_ZERO_SALT: Final = bytes(32)
_NONCE: Final = struct.Struct(">4xQ")
_LENGTH: Final = struct.Struct(">I")


class BadTag(Exception):
    """A transport frame whose tag does not verify: the stream is untrusted."""


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA-256 (RFC 5869), extract and expand."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def rekey(key: bytes) -> bytes:
    """The key that follows C{key} after 1,000 frames."""
    return hkdf_sha256(key, _ZERO_SALT, REKEY_INFO, 32)


def encode_length(length: int) -> bytes:
    return _LENGTH.pack(length)


class CipherState:
    """
    One direction of the transport: a key, its AES-GCM object, a counter.

    The AESGCM object is made once per key, not per frame, when the key is
    first used.  L{release} drops it: an idle connection then holds 32 bytes
    of key instead of OpenSSL's cipher contexts (about 2.5 KiB each), and
    the next frame makes it again (a few microseconds).

    @ivar key: the current key (32 bytes).
    @ivar counter: the number of frames sealed or opened under C{key}.
    @ivar generation: how many times the key was replaced.
    """

    __slots__ = ("key", "counter", "generation", "_aead", "_mark")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a transport key is 32 bytes")
        self.key = key
        self.counter = 0
        self.generation = 0
        self._aead: AESGCM | None = None
        self._mark = -1

    def release(self) -> None:
        """Drop the AESGCM object until the next frame (memory for idle connections)."""
        self._aead = None

    def release_if_idle(self) -> None:
        """
        L{release} if no frame went through since the last call: called
        every few seconds for every connection, it costs no work per frame.
        """
        mark = self.generation * REKEY_AFTER + self.counter
        if mark == self._mark:
            self._aead = None
        self._mark = mark

    def _next(self) -> tuple[AESGCM, bytes]:
        """The cipher and nonce of the next frame; rekeys after 1,000 frames."""
        c = self.counter
        if c == REKEY_AFTER:
            self.key = rekey(self.key)
            self._aead = None
            self.generation += 1
            c = 0
        self.counter = c + 1
        aead = self._aead
        if aead is None:
            aead = self._aead = AESGCM(self.key)
        return aead, _NONCE.pack(c)

    def seal(self, plaintext: bytes) -> tuple[bytes, bytes]:
        """
        Seal the next frame.

        @return: the 4 length bytes and the body (ciphertext || tag), apart,
            so a large frame is not copied once more to join them.
        """
        header = _LENGTH.pack(len(plaintext) + TAG_SIZE)
        c = self.counter
        aead = self._aead
        if c == REKEY_AFTER or aead is None:
            aead, nonce = self._next()
        else:  # the common case, inline
            self.counter = c + 1
            nonce = _NONCE.pack(c)
        return header, aead.encrypt(nonce, plaintext, header)

    def seal_frame(self, plaintext: bytes) -> bytes:
        """Seal the next frame and return it whole."""
        header, body = self.seal(plaintext)
        return header + body

    def open(self, header: bytes | memoryview, body: bytes | memoryview) -> bytes:
        """
        Open the next frame.

        @raise BadTag: the tag does not verify (wrong key, counter, length or
            any flipped bit).
        """
        c = self.counter
        aead = self._aead
        if c == REKEY_AFTER or aead is None:
            aead, nonce = self._next()
        else:  # the common case, inline
            self.counter = c + 1
            nonce = _NONCE.pack(c)
        try:
            return aead.decrypt(nonce, body, header)
        except InvalidTag:
            raise BadTag("transport frame failed authentication") from None


class ReceiveBuffer:
    """
    Bytes received and not yet consumed, as a C{bytearray} and a read offset.

    Appending to a C{bytearray} is amortised O(1) and deleting a consumed
    prefix only moves what is left, so the cost stays linear in the bytes
    received, whether a large frame arrives in one read or byte by byte.
    (C{buf = buf + data} would copy the whole buffer per read; Twisted's
    C{IntNStringReceiver} had that bug, twisted issue 6358.)
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def __len__(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        self._buf += data

    def peek_length(self) -> int | None:
        """The next frame's length field, once its 4 bytes are here."""
        if len(self._buf) - self._pos < LENGTH_SIZE:
            return None
        return _LENGTH.unpack_from(self._buf, self._pos)[0]  # type: ignore[no-any-return]

    def has(self, length: int) -> bool:
        """Is the whole frame with this body length here?"""
        return len(self._buf) - self._pos >= LENGTH_SIZE + length

    def take_body(self, length: int) -> bytes:
        """Copy out the next frame's body and consume the frame."""
        start = self._pos + LENGTH_SIZE
        self._pos = start + length
        return bytes(self._buf[start : start + length])

    def open_frame(self, cipher: CipherState, length: int) -> bytes:
        """
        Decrypt the next frame in place (no copy of the body) and consume it.

        @raise BadTag: as L{CipherState.open}.
        """
        pos = self._pos
        with memoryview(self._buf) as mv:
            header = mv[pos : pos + LENGTH_SIZE]
            body = mv[pos + LENGTH_SIZE : pos + LENGTH_SIZE + length]
            try:
                return cipher.open(header, body)
            finally:
                header.release()
                body.release()
                self._pos = pos + LENGTH_SIZE + length

    def compact(self) -> None:
        """Drop consumed bytes; done once per read, not once per frame."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0

    def clear(self) -> None:
        self._buf = bytearray()
        self._pos = 0
