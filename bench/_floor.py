"""
The "floor" transport of L{bench.floor}: a BOTD #2 handshake with the least
Python around it, to measure what any implementation on Twisted pays.

Not a BOTD #2 implementation and not for use: no checks but the signatures,
no timers, no limits, no rekey, no keep-alive, no Error, no logging; Init
and Ack are raw concatenations instead of protobuf messages; the first
transport frame confirms the keys (no separate empty one).  What it keeps
is every cryptographic operation of a real handshake, with the very
libsecp256k1 calls botd2 makes (L{botd2._secp256k1}), the same HKDF and
AES-GCM, and the same round trips over the same Twisted TCP transport and
length-prefixed framing (C{Int32StringReceiver}) as the baselines:

    initiator: ephemeral key, sign       -> Init  (S_i, S_r, E_i, sig)
    responder: parse two keys, verify, ephemeral key, sign, ECDH, HKDF,
               two AES-GCM objects       -> Ack   (E_r, sig)
    initiator: parse, verify, ECDH, HKDF, two AES-GCM objects
    then Envelopes sealed one per frame, as botd2's transport frames.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.wrappers_pb2 import BytesValue
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory

from bench._common import ClientLogic, EnvelopeReceiver, TrackedServer, pack_envelope
from botd2 import _secp256k1 as c
from botd2.botd2_pb2 import Envelope
from botd2.frames import hkdf_sha256
from botd2.handshake import TRANSPORT_INFO

_NONCE = struct.Struct(">4xQ").pack


class FloorPeer(EnvelopeReceiver):
    """Both roles: the handshake frames first, then sealed Envelopes."""

    initiator = False
    _send: AESGCM | None = None
    _recv: AESGCM | None = None
    _sent = 0
    _received = 0

    def _keys(self, secret: bytes, peer_ephemeral: Any, init: bytes, ack: bytes) -> None:
        okm = hkdf_sha256(c.ecdh(secret, peer_ephemeral), hashlib.sha256(init + ack).digest(),
                          TRANSPORT_INFO, 64)
        k_ir, k_ri = AESGCM(okm[:32]), AESGCM(okm[32:])
        self._send, self._recv = (k_ir, k_ri) if self.initiator else (k_ri, k_ir)

    def sendMessage(self, message: BytesValue) -> None:
        assert self._send is not None
        self.sendString(self._send.encrypt(_NONCE(self._sent), pack_envelope(message), None))
        self._sent += 1

    def transportFrame(self, data: bytes) -> None:
        assert self._recv is not None
        plain = self._recv.decrypt(_NONCE(self._received), data, None)
        self._received += 1
        envelope = Envelope.FromString(plain)
        self.handle(BytesValue.FromString(envelope.payload.value))


class FloorServer(TrackedServer, FloorPeer):
    factory: FloorServerFactory

    def stringReceived(self, data: bytes) -> None:
        if self._recv is not None:
            self.transportFrame(data)
            return
        factory = self.factory
        if len(data) != 163:  # the C calls below read fixed lengths
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        sender, recipient, eph = data[:33], data[33:66], data[66:99]
        sender_key = c.pubkey_parse(sender)
        eph_key = c.pubkey_parse(eph)
        if (
            recipient != factory.static_pub
            or sender_key is None
            or eph_key is None
            or not c.verify(sender_key, data[99:163], data[:99])
        ):
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        secret = c.random_secret()
        our_eph = c.pubkey_serialize(c.pubkey_create(secret))
        ack = our_eph + c.sign(factory.static, recipient + sender + our_eph)
        self._keys(secret, eph_key, data, ack)
        self.sendString(ack)


class FloorServerFactory(Factory):
    protocol = FloorServer  # type: ignore[assignment]
    noisy = False

    def __init__(self) -> None:
        self.static = c.random_secret()
        self.static_pub = c.pubkey_serialize(c.pubkey_create(self.static))
        self.live: set[FloorServer] = set()


class FloorClient(ClientLogic, FloorPeer):
    """Fires L{ready} with itself once the Ack verified; L{lost} when gone."""

    initiator = True
    factory: FloorClientFactory

    def __init__(self) -> None:
        self.ready: Deferred[FloorClient] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self._init = b""
        self._secret = b""

    def connectionMade(self) -> None:
        factory = self.factory
        self._secret = c.random_secret()
        eph = c.pubkey_serialize(c.pubkey_create(self._secret))
        signed = factory.static_pub + factory.peer_pub + eph
        self._init = signed + c.sign(factory.static, signed)
        self.sendString(self._init)

    def stringReceived(self, data: bytes) -> None:
        if self._recv is not None:
            self.transportFrame(data)
            return
        factory = self.factory
        eph = data[:33]
        eph_key = c.pubkey_parse(eph) if len(data) == 97 else None
        if eph_key is None or not c.verify(
            factory.peer_key, data[33:97], factory.peer_pub + factory.static_pub + eph
        ):
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._keys(self._secret, eph_key, self._init, data)
        self._secret = self._init = b""
        self.ready.callback(self)

    def connectionLost(self, reason: object = None) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError("floor: connection lost during the handshake"))
        self.lost.callback(None)


class FloorClientFactory(Factory):
    protocol = FloorClient  # type: ignore[assignment]
    noisy = False

    def __init__(self, peer: bytes) -> None:
        self.static = c.random_secret()
        self.static_pub = c.pubkey_serialize(c.pubkey_create(self.static))
        self.peer_pub = peer
        self.peer_key = c.pubkey_parse(peer)
