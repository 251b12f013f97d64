# -*- test-case-name: tests.test_handshake -*-
"""
The Init/Ack handshake messages and the key schedule (WIRE.md section 4).

Pure functions: build an Init or an Ack, check one, derive the transport
keys.  The state machines that call them, in order, are in
L{botd2.connection}.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from botd2.botd2_pb2 import Ack, Envelope, Init
from botd2.frames import hkdf_sha256
from botd2.keys import BadSignature, InvalidKey, PrivateKey, PublicKey
from botd2.messages import DecodeError, is_valid_id, parse_envelope

TRANSPORT_INFO: Final = b"botd2/1 transport keys"

#: A policy hook: may this static key connect to us?
AllowPolicy = Callable[[PublicKey], bool]


class HandshakeError(Exception):
    """
    A handshake frame that breaks a rule of WIRE.md section 4.

    @ivar code: a short stable name for the rule (C{parse_error},
        C{unexpected_message}, C{bad_id}, C{bad_pubkey}, C{wrong_recipient},
        C{self_connection}, C{not_allowed}, C{wrong_init_id}, or a
        L{BadSignature} code).
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class ReceivedInit:
    """What a responder learns from a valid Init."""

    id: str
    sender: PublicKey
    ephemeral: PublicKey


@dataclass(frozen=True, repr=False)
class TransportKeys:
    """The key schedule of WIRE.md section 4 step 5, every value kept for tests."""

    ss: bytes
    th: bytes
    okm: bytes

    def __repr__(self) -> str:
        return "<TransportKeys (secret)>"  # never the keys, in a log or a traceback

    @property
    def k_ir(self) -> bytes:
        """Initiator to responder."""
        return self.okm[:32]

    @property
    def k_ri(self) -> bytes:
        """Responder to initiator."""
        return self.okm[32:]


def make_init(
    static: PrivateKey, responder: PublicKey, ephemeral: PublicKey, init_id: str
) -> bytes:
    """The serialized C{Envelope{init}} of step 1."""
    sender = bytes(static.public_key)
    recipient = bytes(responder)
    eph = bytes(ephemeral)
    init = Init(
        id=init_id,
        sender_pubkey=sender,
        recipient_pubkey=recipient,
        ephemeral_pubkey=eph,
        signature=static.sign(sender + recipient + eph),
    )
    return Envelope(init=init).SerializeToString()


def make_ack(
    static: PrivateKey,
    initiator: PublicKey,
    ephemeral: PublicKey,
    init_id: str,
    ack_id: str,
) -> bytes:
    """The serialized C{Envelope{ack}} of step 3."""
    eph = bytes(ephemeral)
    ack = Ack(
        id=ack_id,
        init_id=init_id,
        ephemeral_pubkey=eph,
        signature=static.sign(bytes(static.public_key) + bytes(initiator) + eph),
    )
    return Envelope(ack=ack).SerializeToString()


def _envelope_body(body: bytes, expected: str) -> Envelope:
    try:
        envelope = parse_envelope(body)
    except DecodeError:
        raise HandshakeError("parse_error", "handshake frame is not an Envelope") from None
    kind = envelope.WhichOneof("body")
    if kind != expected:
        raise HandshakeError(
            "unexpected_message", f"expected an {expected}, got {kind or 'an empty Envelope'}"
        )
    return envelope


def _key(data: bytes, what: str) -> PublicKey:
    try:
        return PublicKey(data)
    except InvalidKey as e:
        raise HandshakeError("bad_pubkey", f"{what}: {e}") from None


def _verify(key: PublicKey, signature: bytes, message: bytes, what: str) -> None:
    try:
        key.verify(signature, message)
    except BadSignature as e:
        raise HandshakeError(e.code, f"{what}: {e}") from None


def check_init(
    body: bytes, static: PublicKey, allow: AllowPolicy | None = None
) -> ReceivedInit:
    """
    Step 2: check an Init frame body received by the responder C{static}.

    Cheap checks come first, so a stranger costs as little as possible; the
    signature is verified last.

    @raise HandshakeError: on any failure.
    """
    init = _envelope_body(body, "init").init
    if not is_valid_id(init.id):
        raise HandshakeError("bad_id", "Init id is empty or longer than 64 bytes")
    recipient = init.recipient_pubkey
    if recipient != bytes(static):
        _key(recipient, "Init recipient_pubkey")
        raise HandshakeError("wrong_recipient", "Init is addressed to another node")
    if init.sender_pubkey == recipient:
        raise HandshakeError("self_connection", "Init comes from our own key")
    sender = _key(init.sender_pubkey, "Init sender_pubkey")
    ephemeral = _key(init.ephemeral_pubkey, "Init ephemeral_pubkey")
    if allow is not None and not allow(sender):
        raise HandshakeError("not_allowed", f"node {sender.node_id} is not allowed to connect")
    _verify(
        sender,
        init.signature,
        init.sender_pubkey + recipient + init.ephemeral_pubkey,
        "Init signature",
    )
    return ReceivedInit(init.id, sender, ephemeral)


def check_ack(body: bytes, init_id: str, static: PublicKey, responder: PublicKey) -> PublicKey:
    """
    Step 4: check an Ack frame body received by the initiator C{static}.

    @return: the responder's ephemeral key.
    @raise HandshakeError: on any failure.
    """
    ack = _envelope_body(body, "ack").ack
    if not is_valid_id(ack.id):
        raise HandshakeError("bad_id", "Ack id is empty or longer than 64 bytes")
    if ack.init_id != init_id:
        raise HandshakeError("wrong_init_id", "Ack init_id is not the id of our Init")
    ephemeral = _key(ack.ephemeral_pubkey, "Ack ephemeral_pubkey")
    _verify(
        responder,
        ack.signature,
        bytes(responder) + bytes(static) + ack.ephemeral_pubkey,
        "Ack signature",
    )
    return ephemeral


def derive_keys(
    ephemeral: PrivateKey, peer_ephemeral: PublicKey, init_body: bytes, ack_body: bytes
) -> TransportKeys:
    """
    Step 5: C{ss}, C{th} over the two frame bodies exactly as they were on
    the wire, and HKDF to 64 bytes.
    """
    ss = ephemeral.ecdh(peer_ephemeral)
    th = hashlib.sha256(init_body + ack_body).digest()
    return TransportKeys(ss, th, hkdf_sha256(ss, th, TRANSPORT_INFO, 64))
