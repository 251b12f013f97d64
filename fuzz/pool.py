"""
Fixed keys, ids and precomputed handshakes.

Keys and ids are fixed and signatures are RFC 6979, so every handshake here
is byte-identical from run to run, and a fuzz input can be replayed from its
bytes alone.  L{pool} builds everything once (about 0.2 s) and checks it
against L{fuzz.model}: the Ack botd2 sends is the model's, the keys botd2
derives are the model's, and every signature verifies under the model's
pure-Python ECDSA.

The connections under test:

  - the responder is C{R_STATIC}, with ephemeral C{R_EPHEMERAL}, Ack id
    C{ACK_ID}, and a policy that refuses C{BLOCKED};
  - the initiator is C{I_STATICS[0]} dialling C{R_STATIC}, with ephemeral
    C{I_EPHEMERALS[0]} and Init id C{INIT_IDS[0]}.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache
from typing import Final

from botd2.botd2_pb2 import Ack, Envelope, Init
from botd2.connection import HandshakeComplete, Initiator, Responder
from botd2.handshake import make_ack, make_init
from botd2.keys import PrivateKey, PublicKey
from fuzz import model

R_STATIC: Final = PrivateKey.from_int(0xB07D_0002)
R_EPHEMERAL: Final = PrivateKey.from_int(0xE9E9_0002)
#: Ephemeral keys of other responders' Acks (for the initiator target).
R_EPHEMERALS: Final = (R_EPHEMERAL, PrivateKey.from_int(0xE9E9_0003))
ACK_ID: Final = "0b07d2a0-0000-4000-8000-00000000a001"
ACK_IDS: Final = (ACK_ID, "a", "\u00e9" * 32)

I_STATICS: Final = tuple(PrivateKey.from_int(0xB07D_0101 + k) for k in range(3))
#: The responder's allow policy refuses this one (it signs valid Inits).
BLOCKED: Final = I_STATICS[2]
I_EPHEMERALS: Final = tuple(PrivateKey.from_int(0xE9E9_0101 + k) for k in range(3))
#: Ids of Inits: canonical UUID4, 1 byte, 64 bytes of UTF-8 (32 two-byte characters).
INIT_IDS: Final = ("0b07d2a0-0000-4000-8000-00000000i001", "x", "\u00e9" * 32)
#: Another node, to address Inits to and sign Acks with.
OTHER: Final = PrivateKey.from_int(0xB07D_0999)
#: The id of every Error the connections under test send.
ERROR_ID: Final = "0b07d2a0-0000-4000-8000-00000000e001"


def error_id() -> str:
    return ERROR_ID


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@dataclass(frozen=True)
class Handshake:
    """
    One valid handshake as on the wire, and its transport keys.

    @ivar init: the Init frame (length and body).
    @ivar ack: the Ack frame.
    @ivar confirmation: the initiator's key confirmation frame.
    @ivar k_ir: initiator -> responder key; C{k_ri} the other way.
    @ivar initiator: the initiator's static public key.
    """

    init: bytes
    ack: bytes
    confirmation: bytes
    k_ir: bytes
    k_ri: bytes
    th: bytes
    initiator: bytes


@dataclass(frozen=True)
class Pool:
    #: Valid Inits to the responder under test, each with its whole handshake.
    to_responder: tuple[Handshake, ...]
    #: Valid Acks to the initiator under test, each with its whole handshake.
    to_initiator: tuple[Handshake, ...]
    #: Init bodies the responder must refuse, with the code it must give.
    bad_inits: tuple[tuple[bytes, str], ...]
    #: Ack bodies the initiator must refuse, with the code it must give.
    bad_acks: tuple[tuple[bytes, str], ...]
    #: Keys, signatures and other pieces for mutators to splice in.
    pubkeys: tuple[bytes, ...]
    signatures: tuple[bytes, ...]
    responder_config: model.Config
    initiator_config: model.Config

    @property
    def handshakes(self) -> tuple[Handshake, ...]:
        return self.to_responder + self.to_initiator


def new_responder() -> Responder:
    """The responder under test, fresh."""
    return Responder(
        R_STATIC,
        allow=_allow,
        ephemeral=R_EPHEMERAL,
        ack_id=ACK_ID,
        ids=error_id,
    )


def _allow(key: PublicKey) -> bool:
    return key != BLOCKED.public_key


def new_initiator(initiate: bool = True) -> Initiator:
    """The initiator under test, its Init queued (not yet taken) if C{initiate}."""
    i = Initiator(
        I_STATICS[0],
        R_STATIC.public_key,
        ephemeral=I_EPHEMERALS[0],
        init_id=INIT_IDS[0],
        ids=error_id,
    )
    if initiate:
        i.initiate()
    return i


def _handshake(
    i_static: PrivateKey, i_eph: PrivateKey, init_id: str, r_eph: PrivateKey, ack_id: str
) -> Handshake:
    """A real handshake between botd2's two state machines."""
    i = Initiator(i_static, R_STATIC.public_key, ephemeral=i_eph, init_id=init_id)
    i.initiate()
    r = Responder(R_STATIC, ephemeral=r_eph, ack_id=ack_id)
    init = i.data_to_send()
    assert r.receive_data(init) == []
    ack = r.data_to_send()
    (complete,) = i.receive_data(ack)
    assert isinstance(complete, HandshakeComplete)
    assert i.keys is not None and r.keys is not None
    k_ir, k_ri, th = i.keys.k_ir, i.keys.k_ri, i.keys.th
    confirmation = i.data_to_send()
    (complete,) = r.receive_data(confirmation)
    assert isinstance(complete, HandshakeComplete)
    return Handshake(init, ack, confirmation, k_ir, k_ri, th, bytes(i_static.public_key))


def _high_s(body: bytes, kind: str) -> bytes:
    """C{body} with its signature's s replaced by n - s (valid ECDSA, high-S)."""
    envelope = Envelope.FromString(body)
    message = getattr(envelope, kind)
    r, s = message.signature[:32], int.from_bytes(message.signature[32:], "big")
    message.signature = r + (model.N - s).to_bytes(32, "big")
    return envelope.SerializeToString()


def _check(cfg: model.Config, hs: Handshake) -> None:
    """The model agrees with botd2 on a valid handshake, byte for byte."""
    m = model.ModelConnection(cfg)
    if cfg.role == "responder":
        events, out = m.receive(hs.init)
        assert events == [] and out == [hs.ack], "the model's Ack is not botd2's"
        events, out = m.receive(hs.confirmation)
        assert events == [("complete", hs.initiator, hs.th)], events
    else:
        events, out = m.receive(hs.ack)
        assert events == [("complete", cfg.responder, hs.th)], events
        assert out == [hs.confirmation], "the model's key confirmation is not botd2's"
    assert m.keys == model.Keys(hs.th, hs.k_ir, hs.k_ri), "the model's keys are not botd2's"


@cache
def pool() -> Pool:
    """Everything, built once and checked against the model."""
    known = model.KnownSignatures()
    r_pub = bytes(R_STATIC.public_key)
    r_secret = int.from_bytes(R_STATIC.secret_bytes(), "big")
    assert model.public_key(r_secret) == r_pub

    def signed(key: PrivateKey, message: bytes) -> bytes:
        sig = key.sign(message)
        known.add(bytes(key.public_key), message, sig)
        return sig

    def shared(mine: PrivateKey, peers: tuple[PrivateKey, ...]) -> dict[bytes, bytes]:
        secret = int.from_bytes(mine.secret_bytes(), "big")
        out = {}
        for peer in peers:
            ss = model.ecdh(secret, bytes(peer.public_key))
            assert ss == mine.ecdh(peer.public_key), "botd2's ECDH is not the model's"
            out[bytes(peer.public_key)] = ss
        return out

    # Every Init and Ack signature in circulation, made and verified once.
    ack_signatures = {}
    for i_static in (*I_STATICS, R_STATIC, OTHER):
        i_pub = bytes(i_static.public_key)
        ack_signatures[i_pub] = signed(R_STATIC, r_pub + i_pub + bytes(R_EPHEMERAL.public_key))
    responder_config = model.Config(
        "responder",
        r_pub,
        bytes(R_EPHEMERAL.public_key),
        shared(R_EPHEMERAL, I_EPHEMERALS),
        known,
        ack_id=ACK_ID,
        ack_signatures=ack_signatures,
        blocked=frozenset({bytes(BLOCKED.public_key)}),
    )
    to_responder = []
    for i_static, i_eph, init_id in [
        (I_STATICS[0], I_EPHEMERALS[0], INIT_IDS[0]),  # the initiator under test's Init
        (I_STATICS[0], I_EPHEMERALS[1], INIT_IDS[1]),
        (I_STATICS[1], I_EPHEMERALS[2], INIT_IDS[2]),
        (I_STATICS[1], I_EPHEMERALS[0], INIT_IDS[0]),
    ]:
        hs = _handshake(i_static, i_eph, init_id, R_EPHEMERAL, ACK_ID)
        init = hs.init[4:]
        envelope = Envelope.FromString(init)
        signed_part = envelope.init.sender_pubkey + r_pub + envelope.init.ephemeral_pubkey
        known.add(bytes(i_static.public_key), signed_part, envelope.init.signature)
        _check(responder_config, hs)
        to_responder.append(hs)

    init0 = to_responder[0].init[4:]
    made = make_init(I_STATICS[0], R_STATIC.public_key, I_EPHEMERALS[0].public_key, INIT_IDS[0])
    assert init0 == made, "the Init of the initiator under test is not make_init's"
    i_pub = bytes(I_STATICS[0].public_key)
    initiator_config = model.Config(
        "initiator",
        i_pub,
        bytes(I_EPHEMERALS[0].public_key),
        shared(I_EPHEMERALS[0], R_EPHEMERALS),
        known,
        responder=r_pub,
        init_body=init0,
        init_id=INIT_IDS[0],
    )
    to_initiator = []
    for r_eph, ack_id in [
        (R_EPHEMERALS[0], ACK_IDS[0]),
        (R_EPHEMERALS[1], ACK_IDS[1]),
        (R_EPHEMERALS[1], ACK_IDS[2]),
    ]:
        hs = _handshake(I_STATICS[0], I_EPHEMERALS[0], INIT_IDS[0], r_eph, ack_id)
        envelope = Envelope.FromString(hs.ack[4:])
        known.add(r_pub, r_pub + i_pub + envelope.ack.ephemeral_pubkey, envelope.ack.signature)
        _check(initiator_config, hs)
        to_initiator.append(hs)

    # Inits the responder must refuse: each breaks exactly one rule.
    def init_by(signer: PrivateKey, sender: bytes, recipient: bytes, eph: bytes) -> bytes:
        sig = signed(signer, sender + recipient + eph)
        return Envelope(
            init=Init(
                id=INIT_IDS[0],
                sender_pubkey=sender,
                recipient_pubkey=recipient,
                ephemeral_pubkey=eph,
                signature=sig,
            )
        ).SerializeToString()

    e0 = bytes(I_EPHEMERALS[0].public_key)
    other = bytes(OTHER.public_key)
    bad_inits = (
        (init_by(BLOCKED, bytes(BLOCKED.public_key), r_pub, e0), "not_allowed"),
        (init_by(I_STATICS[0], i_pub, other, e0), "wrong_recipient"),
        (init_by(R_STATIC, r_pub, r_pub, e0), "self_connection"),
        (init_by(I_STATICS[1], i_pub, r_pub, e0), "bad_signature"),
        (_high_s(init0, "init"), "high_s"),
    )

    # Acks the initiator must refuse.
    def ack_by(signer: PrivateKey, initiator: bytes, init_id: str) -> bytes:
        r_eph = bytes(R_EPHEMERALS[1].public_key)
        signed(signer, bytes(signer.public_key) + initiator + r_eph)
        return make_ack(signer, PublicKey(initiator), R_EPHEMERALS[1].public_key, init_id, "b")

    ack0 = to_initiator[0].ack[4:]
    bad_acks = (
        (ack_by(OTHER, i_pub, INIT_IDS[0]), "bad_signature"),
        (ack_by(R_STATIC, bytes(I_STATICS[1].public_key), INIT_IDS[0]), "bad_signature"),
        (ack_by(R_STATIC, i_pub, INIT_IDS[1]), "wrong_init_id"),
        (_high_s(ack0, "ack"), "high_s"),
        (
            Envelope(ack=Ack(id="c", init_id=INIT_IDS[0], signature=bytes(64))).SerializeToString(),
            "bad_pubkey",
        ),
    )
    for body, code in bad_inits:
        broken, _ = model.init_violations(body, r_pub, responder_config.blocked, known)
        assert broken == {code}, (code, broken)
    for body, code in bad_acks:
        broken, _ = model.ack_violations(body, INIT_IDS[0], i_pub, r_pub, known)
        assert code in broken, (code, broken)

    more = (*I_STATICS[1:], *I_EPHEMERALS[1:], *R_EPHEMERALS)
    pubkeys = (r_pub, other, i_pub, e0, *(bytes(k.public_key) for k in more))
    signatures = tuple(Envelope.FromString(hs.init[4:]).init.signature for hs in to_responder)
    signatures += tuple(Envelope.FromString(hs.ack[4:]).ack.signature for hs in to_initiator)
    return Pool(
        tuple(to_responder),
        tuple(to_initiator),
        bad_inits,
        bad_acks,
        pubkeys,
        signatures,
        responder_config,
        initiator_config,
    )
