"""
A reference model of WIRE.md, written apart from botd2.

Nothing here imports botd2.  The oracles feed the same reads to botd2 and
to a L{ModelConnection} and compare, read by read, the events and what is
queued for the peer.  The pieces:

  - secp256k1 arithmetic in pure Python: point validation (WIRE.md section
    1), ECDH and ECDSA verification (used to check the pool once, and to
    settle a disagreement about a signature the model does not know);
  - signature checks by the rules of section 1, where "verifies" means
    "is one of the signatures the pool made" (L{KnownSignatures}): a fuzzer
    cannot forge ECDSA, so a mutated input carries a valid signature only if
    it copied one;
  - a proto3 wire-format parser of the messages of section 3, with the
    rules of section 3 (unknown fields skipped, last value wins, embedded
    messages merge, the last oneof member wins, a known field with the wrong
    wire type is unknown; truncation, field number 0 and bad UTF-8 fail) and
    the limits of upb, the protobuf runtime botd2 uses, where the proto3
    format leaves a choice (tags and lengths of at most 5 bytes, varints of
    at most 10, 100 levels of groups and messages, field 0 allowed inside an
    unknown group);
  - the handshake checks of section 4 (every rule an Init or Ack breaks: an
    implementation may check in any order, so any of them may be the one it
    reports), the key schedule (step 5), AES-256-GCM frames with rekeying
    (section 5) and the transport rules of section 5.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# secp256k1 (SEC 2, section 2.4.1) -------------------------------------------

P: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F
N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_N: Final = (N - 1) // 2
G: Final = (
    0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
    0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8,
)

Point = tuple[int, int] | None  # None: the point at infinity


@lru_cache(maxsize=4096)
def decode_point(data: bytes) -> Point:
    """
    A 33-byte compressed key as a point, or C{None} if it is not a valid one
    (cached: the same keys come back all the time, and a square root costs).
    """
    if len(data) != 33 or data[0] not in (2, 3):
        return None
    x = int.from_bytes(data[1:], "big")
    if x >= P:
        return None
    y2 = (pow(x, 3, P) + 7) % P
    y = pow(y2, (P + 1) // 4, P)
    if y * y % P != y2:
        return None
    if (y & 1) != (data[0] & 1):
        y = P - y
    return (x, y)


def is_valid_key(data: bytes) -> bool:
    """WIRE.md section 1: 33 bytes, prefix 2 or 3, X < p, X on the curve."""
    return decode_point(data) is not None


def encode_point(point: Point) -> bytes:
    assert point is not None
    x, y = point
    return bytes((2 + (y & 1),)) + x.to_bytes(32, "big")


def _add(a: Point, b: Point) -> Point:
    if a is None:
        return b
    if b is None:
        return a
    (x1, y1), (x2, y2) = a, b
    if x1 == x2:
        if (y1 + y2) % P == 0:
            return None
        lam = 3 * x1 * x1 * pow(2 * y1, -1, P) % P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (lam * lam - x1 - x2) % P
    return (x3, (lam * (x1 - x3) - y1) % P)


def multiply(k: int, point: Point) -> Point:
    """C{k} times C{point}, double and add (slow: for the pool only)."""
    result: Point = None
    addend = point
    while k:
        if k & 1:
            result = _add(result, addend)
        addend = _add(addend, addend)
        k >>= 1
    return result


def public_key(secret: int) -> bytes:
    return encode_point(multiply(secret, G))


def ecdh(secret: int, peer: bytes) -> bytes:
    """libsecp256k1's default ECDH: SHA-256 of the compressed shared point."""
    return hashlib.sha256(encode_point(multiply(secret, decode_point(peer)))).digest()


def ecdsa_verify(key: bytes, signature: bytes, message: bytes) -> bool:
    """ECDSA over secp256k1 with e = SHA-256(message), by the rules of WIRE.md section 1."""
    q = decode_point(key)
    if q is None or len(signature) != 64:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < N and 0 < s <= HALF_N):
        return False
    e = int.from_bytes(hashlib.sha256(message).digest(), "big")
    w = pow(s, -1, N)
    point = _add(multiply(e * w % N, G), multiply(r * w % N, q))
    return point is not None and point[0] % N == r


class KnownSignatures:
    """
    The signatures the pool made, each checked once with L{ecdsa_verify}:
    (key, message, signature) triples.  A signature the model does not know
    is checked with L{ecdsa_verify} when botd2 disagrees (L{settle}).
    """

    def __init__(self) -> None:
        self._known: set[tuple[bytes, bytes, bytes]] = set()

    def add(self, key: bytes, message: bytes, signature: bytes) -> None:
        if not ecdsa_verify(key, signature, message):
            raise AssertionError(f"the pool made a signature that does not verify: {key.hex()}")
        self._known.add((key, message, signature))

    def __contains__(self, triple: tuple[bytes, bytes, bytes]) -> bool:
        return triple in self._known

    def settle(self, key: bytes, message: bytes, signature: bytes) -> bool:
        """Is this unknown signature valid after all?  If so, remember it."""
        if ecdsa_verify(key, signature, message):
            self._known.add((key, message, signature))
            return True
        return False


def signature_violation(
    known: KnownSignatures, key: bytes, signature: bytes, message: bytes
) -> str | None:
    """The rule of WIRE.md section 1 a signature breaks, or C{None}."""
    if len(signature) != 64:
        return "bad_signature_length"
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return "signature_out_of_range"
    if s > HALF_N:
        return "high_s"
    if (key, message, signature) in known:
        return None
    return "bad_signature"


# Key schedule and frames (WIRE.md sections 4 and 5) --------------------------

TRANSPORT_INFO: Final = b"botd2/1 transport keys"
REKEY_INFO: Final = b"botd2/1 rekey"
TAG: Final = 16
MAX_MESSAGE: Final = 1_048_576
HANDSHAKE_MAX: Final = 1024
FRAMES_PER_KEY: Final = 1000


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA-256 (RFC 5869)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes((counter,)), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


@dataclass(frozen=True)
class Keys:
    th: bytes
    k_ir: bytes
    k_ri: bytes


def derive(ss: bytes, init_body: bytes, ack_body: bytes) -> Keys:
    th = hashlib.sha256(init_body + ack_body).digest()
    okm = hkdf(ss, th, TRANSPORT_INFO, 64)
    return Keys(th, okm[:32], okm[32:])


class Direction:
    """One direction: key, counter, rekey after 1,000 frames."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.counter = 0
        self._aead = AESGCM(key)

    def _nonce(self) -> bytes:
        if self.counter == FRAMES_PER_KEY:
            self.key = hkdf(self.key, bytes(32), REKEY_INFO, 32)
            self._aead = AESGCM(self.key)
            self.counter = 0
        nonce = bytes(4) + self.counter.to_bytes(8, "big")
        self.counter += 1
        return nonce

    def position(self) -> tuple[bytes, int]:
        """The key and counter the next frame will use (without using them)."""
        if self.counter == FRAMES_PER_KEY:
            return hkdf(self.key, bytes(32), REKEY_INFO, 32), 0
        return self.key, self.counter

    def seal(self, plaintext: bytes) -> bytes:
        header = struct.pack(">I", len(plaintext) + TAG)
        nonce = self._nonce()  # first: it may rekey
        return header + self._aead.encrypt(nonce, plaintext, header)

    def open(self, header: bytes, body: bytes) -> bytes | None:
        """The plaintext, or C{None} if the tag does not verify."""
        nonce = self._nonce()  # first: it may rekey
        try:
            return self._aead.decrypt(nonce, body, header)
        except InvalidTag:
            return None


def open_at(key: bytes, counter: int, frame: bytes) -> bytes | None:
    """Open one whole frame sealed under C{key} with counter C{counter}."""
    try:
        nonce = bytes(4) + counter.to_bytes(8, "big")
        return AESGCM(key).decrypt(nonce, frame[4:], frame[:4])
    except InvalidTag:
        return None


# proto3 wire format (WIRE.md section 3, with upb's limits) ---------------------


class WireError(Exception):
    """Bytes that are not a message: a parse error."""


MAX_DEPTH: Final = 100


def read_varint(data: bytes, pos: int, limit: int = 10) -> tuple[int, int]:
    result = shift = 0
    for _ in range(limit):
        if pos >= len(data):
            raise WireError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    raise WireError("varint too long")


def read_tag(data: bytes, pos: int) -> tuple[int, int, int]:
    tag, pos = read_varint(data, pos, 5)
    if tag > 0xFFFFFFFF:
        raise WireError("tag larger than 32 bits")
    return tag >> 3, tag & 7, pos


def read_value(data: bytes, pos: int, number: int, wire: int, depth: int) -> tuple[object, int]:
    """The value of a field whose tag ended at C{pos}; groups are skipped whole."""
    if wire == 0:
        return read_varint(data, pos)
    if wire in (1, 5):
        size = 8 if wire == 1 else 4
        if pos + size > len(data):
            raise WireError("truncated fixed field")
        return int.from_bytes(data[pos : pos + size], "little"), pos + size
    if wire == 2:
        length, pos = read_varint(data, pos, 5)
        if length > len(data) - pos:
            raise WireError("truncated length-delimited field")
        return data[pos : pos + length], pos + length
    if wire == 3:
        start = pos
        pos = skip_group(data, pos, number, depth - 1)
        return data[start:pos], pos
    raise WireError(f"wire type {wire} here")


def skip_group(data: bytes, pos: int, number: int, depth: int) -> int:
    """Skip a group's fields up to its end tag; return the position after it."""
    if depth < 0:
        raise WireError("nested too deeply")
    while True:
        if pos >= len(data):
            raise WireError("unterminated group")
        inner, wire, pos = read_tag(data, pos)
        if wire == 4:
            if inner != number:
                raise WireError("mismatched end group")
            return pos
        _, pos = read_value(data, pos, inner, wire, depth)


def fields(data: bytes, depth: int = MAX_DEPTH) -> list[tuple[int, int, object]]:
    """The fields of a message: (number, wire type, value) in wire order."""
    out: list[tuple[int, int, object]] = []
    pos = 0
    while pos < len(data):
        number, wire, pos = read_tag(data, pos)
        if number == 0:
            raise WireError("field number 0")
        if wire == 4:
            raise WireError("end group outside a group")
        value, pos = read_value(data, pos, number, wire, depth)
        out.append((number, wire, value))
    return out


#: Field number -> (name, is a string) of each message of section 3.
SCHEMAS: Final[dict[str, dict[int, tuple[str, bool]]]] = {
    "init": {
        1: ("id", True),
        2: ("sender_pubkey", False),
        3: ("recipient_pubkey", False),
        4: ("ephemeral_pubkey", False),
        5: ("signature", False),
    },
    "ack": {
        1: ("id", True),
        2: ("init_id", True),
        3: ("ephemeral_pubkey", False),
        4: ("signature", False),
    },
    "ping": {1: ("id", True)},
    "pong": {1: ("id", True), 2: ("ping_id", True)},
    "error": {1: ("id", True), 2: ("message", True)},
    "payload": {1: ("type_url", True), 2: ("value", False)},
}
BODY: Final = {1: "init", 2: "ack", 3: "ping", 4: "pong", 5: "error", 6: "payload"}


def parse_into(kind: str, data: bytes, into: dict[str, object], depth: int) -> None:
    """Merge the fields of a C{kind} message into C{into} (last value wins)."""
    if depth < 0:
        raise WireError("nested too deeply")
    schema = SCHEMAS[kind]
    for number, wire, value in fields(data, depth):
        known = schema.get(number)
        if known is None or wire != 2:
            continue  # unknown, or a known field with the wrong wire type
        name, is_string = known
        assert isinstance(value, bytes)
        if is_string:
            try:
                into[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise WireError(f"{kind}.{name} is not UTF-8") from None
        else:
            into[name] = value


@dataclass
class ModelEnvelope:
    """An Envelope: which body is set (or C{None}), and that body's fields."""

    kind: str | None
    body: dict[str, object] = field(default_factory=dict)

    def get(self, name: str) -> object:
        if name in self.body:
            return self.body[name]
        assert self.kind is not None
        is_string = {n: s for n, s in SCHEMAS[self.kind].values()}[name]
        return "" if is_string else b""

    def text(self, name: str) -> str:
        value = self.get(name)
        assert isinstance(value, str)
        return value

    def data(self, name: str) -> bytes:
        value = self.get(name)
        assert isinstance(value, bytes)
        return value


def parse_envelope(data: bytes) -> ModelEnvelope:
    """
    An Envelope by section 3: a oneof member seen again merges into itself;
    another member replaces it (the last member present wins).
    """
    envelope = ModelEnvelope(None)
    for number, wire, value in fields(data):
        kind = BODY.get(number)
        if kind is None or wire != 2:
            continue
        assert isinstance(value, bytes)
        if envelope.kind != kind:
            envelope = ModelEnvelope(kind)
        parse_into(kind, value, envelope.body, MAX_DEPTH - 1)
    return envelope


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def canonical(kind: str, values: dict[str, object]) -> bytes:
    """The canonical Envelope{kind}: fields in order, defaults left out."""
    inner = b""
    for number, (name, is_string) in sorted(SCHEMAS[kind].items()):
        value = values.get(name, "" if is_string else b"")
        raw = value.encode("utf-8") if isinstance(value, str) else value
        assert isinstance(raw, bytes)
        if raw:
            inner += varint(number << 3 | 2) + varint(len(raw)) + raw
    number = {v: k for k, v in BODY.items()}[kind]
    return varint(number << 3 | 2) + varint(len(inner)) + inner


def is_valid_id(value: str) -> bool:
    """WIRE.md section 3: 1..64 bytes of UTF-8."""
    return 1 <= len(value.encode("utf-8")) <= 64


# Handshake checks (WIRE.md section 4) ---------------------------------------------


@dataclass(frozen=True)
class ModelInit:
    id: str
    sender: bytes
    recipient: bytes
    ephemeral: bytes
    signature: bytes


def init_violations(
    body: bytes, static: bytes, blocked: frozenset[bytes], known: KnownSignatures
) -> tuple[frozenset[str], ModelInit | None]:
    """
    Every rule of step 2 an Init frame body breaks (empty: valid), and the
    Init when it parses.
    """
    try:
        envelope = parse_envelope(body)
    except WireError:
        return frozenset({"parse_error"}), None
    if envelope.kind != "init":
        return frozenset({"unexpected_message"}), None
    init = ModelInit(
        envelope.text("id"),
        envelope.data("sender_pubkey"),
        envelope.data("recipient_pubkey"),
        envelope.data("ephemeral_pubkey"),
        envelope.data("signature"),
    )
    broken = set()
    if not is_valid_id(init.id):
        broken.add("bad_id")
    if not all(map(is_valid_key, (init.sender, init.recipient, init.ephemeral))):
        broken.add("bad_pubkey")
    if init.recipient != static:
        broken.add("wrong_recipient")
    if init.sender == static:
        broken.add("self_connection")
    if init.sender in blocked:
        broken.add("not_allowed")
    bad = signature_violation(
        known, init.sender, init.signature, init.sender + init.recipient + init.ephemeral
    )
    if bad is not None:
        broken.add(bad)
    return frozenset(broken), init


@dataclass(frozen=True)
class ModelAck:
    id: str
    init_id: str
    ephemeral: bytes
    signature: bytes


def ack_violations(
    body: bytes, init_id: str, static: bytes, responder: bytes, known: KnownSignatures
) -> tuple[frozenset[str], ModelAck | None]:
    """Every rule of step 4 an Ack frame body breaks (empty: valid)."""
    try:
        envelope = parse_envelope(body)
    except WireError:
        return frozenset({"parse_error"}), None
    if envelope.kind != "ack":
        return frozenset({"unexpected_message"}), None
    ack = ModelAck(
        envelope.text("id"),
        envelope.text("init_id"),
        envelope.data("ephemeral_pubkey"),
        envelope.data("signature"),
    )
    broken = set()
    if not is_valid_id(ack.id):
        broken.add("bad_id")
    if ack.init_id != init_id:
        broken.add("wrong_init_id")
    if not is_valid_key(ack.ephemeral):
        broken.add("bad_pubkey")
    bad = signature_violation(known, responder, ack.signature, responder + static + ack.ephemeral)
    if bad is not None:
        broken.add(bad)
    return frozenset(broken), ack


# The connection ---------------------------------------------------------------------

#: Events as tuples: ("complete", peer, th), ("payload", type_url, value),
#: ("ping", id), ("pong", id, ping_id), ("error", message as received),
#: ("failed", frozenset of the codes any of which may be reported).
ModelEvent = tuple[object, ...]


@dataclass(frozen=True)
class ErrorFrame:
    """An Error frame the connection sends before closing: its key and counter."""

    key: bytes
    counter: int


Output = bytes | ErrorFrame


@dataclass(frozen=True)
class Config:
    """
    What a model connection knows: its role, its keys (public halves, and
    the ECDH results of its ephemeral with each peer ephemeral it may meet),
    the ids it uses, and the signatures in circulation.
    """

    role: str
    static: bytes
    ephemeral: bytes
    shared: dict[bytes, bytes]  # peer ephemeral -> ss
    known: KnownSignatures
    # responder
    ack_id: str = ""
    ack_signatures: dict[bytes, bytes] = field(default_factory=dict)  # initiator -> sig
    blocked: frozenset[bytes] = frozenset()
    # initiator
    responder: bytes = b""
    init_body: bytes = b""
    init_id: str = ""
    max_message: int = MAX_MESSAGE


class ModelGap(Exception):
    """The model met something its pool cannot answer (an unknown ephemeral key)."""


class ModelConnection:
    """
    The expected behaviour of one connection, read by read: L{receive}
    returns the events and the output a conforming implementation gives.

    Closing rules: before the handshake is complete, or after a bad tag,
    nothing is sent, not even what this read queued earlier (an Ack, a key
    confirmation); after it, a protocol error queues one Error frame; a
    received Error closes with nothing more.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = "await-init" if config.role == "responder" else "await-ack"
        self.buffer = b""
        self.send: Direction | None = None
        self.recv: Direction | None = None
        self.peer: bytes | None = config.responder or None
        self.keys: Keys | None = None
        #: The codes of the failure that closed the connection, if one did.
        self.failure: frozenset[str] | None = None
        #: Did the peer's Error close it?
        self.peer_error = False

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    @property
    def complete(self) -> bool:
        return self.state == "open"

    def receive(self, data: bytes) -> tuple[list[ModelEvent], list[Output]]:
        if self.closed:
            return [], []
        events: list[ModelEvent] = []
        out: list[Output] = []
        self.buffer += data
        buf = self.buffer
        pos = 0
        try:
            while len(buf) - pos >= 4:
                length = int.from_bytes(buf[pos : pos + 4], "big")
                if self.recv is None:
                    if not 1 <= length <= HANDSHAKE_MAX:
                        raise _Close(frozenset({"bad_length"}), False)
                    if len(buf) - pos < 4 + length:
                        break
                    body = buf[pos + 4 : pos + 4 + length]
                    pos += 4 + length
                    self._handshake(body, events, out)
                else:
                    if not TAG <= length <= TAG + self.config.max_message:
                        raise _Close(frozenset({"bad_length"}), True)
                    if len(buf) - pos < 4 + length:
                        break
                    header, body = buf[pos : pos + 4], buf[pos + 4 : pos + 4 + length]
                    pos += 4 + length
                    plaintext = self.recv.open(header, body)
                    if plaintext is None:
                        raise _Close(frozenset({"bad_tag"}), False)
                    self._transport(plaintext, events, out)
                    if self.closed:
                        return events, out
        except _Close as c:
            if self.state == "open" and c.send_error:
                assert self.send is not None
                key, counter = self.send.position()
                self.send.seal(b"")  # the Error takes that nonce
                out.append(ErrorFrame(key, counter))
            else:
                out.clear()
            self.state = "closed"
            self.buffer = b""
            self.failure = c.codes
            events.append(("failed", c.codes))
            return events, out
        self.buffer = buf[pos:]
        return events, out

    def _handshake(self, body: bytes, events: list[ModelEvent], out: list[Output]) -> None:
        c = self.config
        if c.role == "responder":
            broken, init = init_violations(body, c.static, c.blocked, c.known)
            if broken:
                raise _Close(broken, False, init)
            assert init is not None
            ack = canonical(
                "ack",
                {
                    "id": c.ack_id,
                    "init_id": init.id,
                    "ephemeral_pubkey": c.ephemeral,
                    "signature": c.ack_signatures[init.sender],
                },
            )
            out.append(struct.pack(">I", len(ack)) + ack)
            self.peer = init.sender
            self._keys(init.ephemeral, body, ack)
            self.state = "await-confirmation"
        else:
            broken, ack_msg = ack_violations(body, c.init_id, c.static, c.responder, c.known)
            if broken:
                raise _Close(broken, False, ack_msg)
            assert ack_msg is not None
            self._keys(ack_msg.ephemeral, c.init_body, body)
            self.state = "open"
            assert self.keys is not None and self.send is not None
            events.append(("complete", c.responder, self.keys.th))
            out.append(self.send.seal(b""))

    def _keys(self, peer_ephemeral: bytes, init_body: bytes, ack_body: bytes) -> None:
        ss = self.config.shared.get(peer_ephemeral)
        if ss is None:
            raise ModelGap(f"no ECDH result for ephemeral key {peer_ephemeral.hex()}")
        keys = self.keys = derive(ss, init_body, ack_body)
        if self.config.role == "initiator":
            self.send, self.recv = Direction(keys.k_ir), Direction(keys.k_ri)
        else:
            self.send, self.recv = Direction(keys.k_ri), Direction(keys.k_ir)

    def _transport(self, plaintext: bytes, events: list[ModelEvent], out: list[Output]) -> None:
        if self.state == "await-confirmation":
            assert self.keys is not None and self.peer is not None
            self.state = "open"
            events.append(("complete", self.peer, self.keys.th))
        if not plaintext:
            return
        try:
            envelope = parse_envelope(plaintext)
        except WireError:
            raise _Close(frozenset({"parse_error"}), True) from None
        kind = envelope.kind
        if kind == "payload":
            events.append(("payload", envelope.text("type_url"), envelope.data("value")))
        elif kind == "ping":
            if not is_valid_id(envelope.text("id")):
                raise _Close(frozenset({"bad_id"}), True)
            events.append(("ping", envelope.text("id")))
        elif kind == "pong":
            if not is_valid_id(envelope.text("id")):
                raise _Close(frozenset({"bad_id"}), True)
            events.append(("pong", envelope.text("id"), envelope.text("ping_id")))
        elif kind == "error":
            self.state = "closed"
            self.peer_error = True
            self.buffer = b""
            events.append(("error", envelope.text("message")))
        elif kind is not None:
            raise _Close(frozenset({"unexpected_message"}), True)


class _Close(Exception):
    def __init__(self, codes: frozenset[str], send_error: bool, parsed: object = None) -> None:
        self.codes = codes
        self.send_error = send_error
        self.parsed = parsed


def frames_of(stream: bytes) -> list[tuple[int, int]]:
    """(start, end) of each whole frame of C{stream}, by the length prefixes alone."""
    out = []
    pos = 0
    while len(stream) - pos >= 4:
        end = pos + 4 + int.from_bytes(stream[pos : pos + 4], "big")
        if end > len(stream):
            break
        out.append((pos, end))
        pos = end
    return out
