"""
Fuzz inputs: generators on a L{Chooser}, and Hypothesis strategies made
from them.

One input per target:

  - L{ConnCase} for C{responder}, C{initiator} and C{transport}: reads for a
    fresh connection under test (L{fuzz.pool}).  Responder and initiator
    cases start with a (possibly mutated) Init or Ack, then transport frames
    sealed with the real keys; a mutated handshake frame that is still
    valid is sometimes I{resealed}: the frames after it are sealed with the
    keys that frame really gives (the model computes them), so noncanonical
    but valid Inits and Acks complete handshakes.  Transport cases deliver
    an intact handshake first (C{setup}), then mutated transport frames, and
    keep the unmutated stream (C{original}) for the prefix oracle.
  - L{BufferCase} for C{buffer}: a byte stream for L{botd2.frames.ReceiveBuffer}.
  - L{TwistedCase} for C{twisted}: reads, and clock advances between them,
    for a L{botd2.protocol.BOTD2Protocol}.

Plaintext Envelopes of transport frames are made valid (payloads, Pings,
Pongs, Errors, empty Envelopes, Inits and Acks out of place, unknown
fields), then sometimes mutated at the protobuf level I{before} sealing, so
that mutated Envelopes get past AES-GCM; byte and frame mutations are
applied after sealing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

from hypothesis import strategies as st

from fuzz import model
from fuzz.mutators import (
    Chooser,
    RandomChooser,
    T,
    coin,
    encode_fields,
    gen_cuts,
    interesting_ids,
    interesting_keys,
    interesting_signatures,
    mutate_proto,
    mutate_stream,
    split,
)
from fuzz.pool import Handshake, frame, pool

TARGETS = ("responder", "initiator", "transport", "buffer", "twisted")

STRING_VALUE_URL = b"type.googleapis.com/google.protobuf.StringValue"
BYTES_VALUE_URL = b"type.googleapis.com/google.protobuf.BytesValue"


# Cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnCase:
    """
    Reads for one connection under test.

    @ivar role: C{"responder"} or C{"initiator"}.
    @ivar setup: an intact handshake, delivered as the first read (transport
        cases), or empty.
    @ivar stream: the bytes under test, delivered in reads cut at C{cuts}.
    @ivar original: the stream before byte and frame mutations, when the
        prefix oracle applies (transport cases).
    @ivar notes: what was done to make it, for reports.
    """

    role: str
    setup: bytes
    stream: bytes
    cuts: tuple[int, ...] = ()
    original: bytes | None = None
    notes: tuple[str, ...] = ()

    def reads(self) -> list[bytes]:
        return ([self.setup] if self.setup else []) + split(self.stream, self.cuts)

    def reproducer(self) -> str:
        original = "-" if self.original is None else self.original.hex()
        cuts = ",".join(map(str, self.cuts))
        return f"conn:{self.role}:{self.setup.hex()}:{self.stream.hex()}:{cuts}:{original}"


@dataclass(frozen=True)
class BufferCase:
    """A byte stream for a ReceiveBuffer, cut into reads; sealed under C{BUFFER_KEY} or not."""

    stream: bytes
    cuts: tuple[int, ...] = ()
    sealed: bool = False
    notes: tuple[str, ...] = ()

    def reads(self) -> list[bytes]:
        return split(self.stream, self.cuts)

    def reproducer(self) -> str:
        cuts = ",".join(map(str, self.cuts))
        return f"buffer:{int(self.sealed)}:{self.stream.hex()}:{cuts}"


@dataclass(frozen=True)
class TwistedCase:
    """
    A connection case for the Twisted layer, and how many seconds the clock
    moves before each read (Ping flood, keep-alive, handshake timeout).
    """

    conn: ConnCase
    advances: tuple[float, ...] = field(default=())

    def reproducer(self) -> str:
        return "twisted:" + ",".join(map(repr, self.advances)) + "|" + self.conn.reproducer()


Case = ConnCase | BufferCase | TwistedCase

BUFFER_KEY = bytes(range(32))


def parse_reproducer(text: str) -> tuple[str, Case]:
    """The target and case of a string made by C{reproducer()}."""
    text = text.strip()
    if text.startswith("twisted:"):
        advances, conn = text[len("twisted:") :].split("|", 1)
        _, case = parse_reproducer(conn)
        assert isinstance(case, ConnCase)
        values = tuple(float(a) for a in advances.split(",") if a)
        return "twisted", TwistedCase(case, values)
    kind, *parts = text.split(":")
    if kind == "buffer":
        sealed, stream, cuts = parts
        return "buffer", BufferCase(bytes.fromhex(stream), _cuts(cuts), sealed == "1")
    role, setup, stream, cuts, original = parts
    case = ConnCase(
        role,
        bytes.fromhex(setup),
        bytes.fromhex(stream),
        _cuts(cuts),
        None if original == "-" else bytes.fromhex(original),
    )
    return ("transport" if case.setup else role), case


def _cuts(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in text.split(",") if c)


# Pieces ---------------------------------------------------------------------------


@cache
def pieces() -> tuple[bytes, ...]:
    """Values a protobuf mutation splices into length-delimited fields."""
    p = pool()
    return (
        interesting_keys(p.pubkeys)
        + interesting_signatures(p.signatures)
        + interesting_ids()
        + (STRING_VALUE_URL, b"\x0a\x01\xff")
    )


@cache
def donors() -> tuple[bytes, ...]:
    """Whole frames and streams to splice from or insert."""
    p = pool()
    out: list[bytes] = []
    for hs in p.handshakes:
        out += [hs.init, hs.ack, hs.confirmation]
    out += [frame(body) for body, _ in p.bad_inits + p.bad_acks]
    return tuple(out)


@cache
def messages() -> tuple[bytes, ...]:
    """Whole Envelopes a protobuf mutation appends (a merge)."""
    p = pool()
    return (
        p.to_responder[0].init[4:],
        p.to_initiator[0].ack[4:],
        envelope(3, [(1, b"p")]),
        envelope(5, [(2, b"bye")]),
        envelope(6, [(1, STRING_VALUE_URL)]),
        b"",
    )


def envelope(number: int, body: Sequence[tuple[int, bytes]]) -> bytes:
    """Envelope{body member C{number}} with these length-delimited fields, canonically."""
    inner = encode_fields([(n, 2, v) for n, v in body if v])
    return encode_fields([(number, 2, inner)])


def _text(ch: Chooser, max_size: int = 40) -> bytes:
    """UTF-8 text: ASCII, accents, emoji, control characters."""
    alphabet = ("a", "Z", " ", "\u00e9", "\U0001f600", "\x00", "\x1b", "\n", "\u2028", "\ufeff")
    return "".join(ch.choice(alphabet) for _ in range(ch.integer(0, max_size))).encode()


ERROR_MESSAGES = (
    b"",
    b"bye",
    b"x" * 256,
    b"x" * 300,
    "\u00e9".encode() * 200,
    ("a" + "\u00e9" * 200).encode(),
    b"\x1b[31mred\x1b[0m\x00\x07",
)


def gen_plaintext(ch: Chooser, big: bool = False) -> tuple[bytes, str]:
    """A serialized Envelope for a transport frame, and its kind."""
    p = pool()
    kind = ch.integer(0, 14)
    if kind == 0:
        return b"", "empty"
    if kind <= 3:
        text = _text(ch)
        value = encode_fields([(1, 2, text)]) if text else b""
        return envelope(6, [(1, STRING_VALUE_URL), (2, value)]), "text"
    if kind == 4:
        blob = ch.blob(ch.choice((0, 1, 100, 1000, 70000)))
        value = encode_fields([(1, 2, blob)]) if blob else b""
        return envelope(6, [(1, BYTES_VALUE_URL), (2, value)]), "bytes"
    if kind == 5:
        url = ch.choice((b"", b"x", b"type.googleapis.com/a.B", STRING_VALUE_URL))
        return envelope(6, [(1, url), (2, ch.binary(20))]), "any"
    if kind == 6:
        # A StringValue that does not parse: the Twisted layer's bad_payload.
        return envelope(6, [(1, STRING_VALUE_URL), (2, b"\x0a\x02\xc3\x28")]), "bad_string"
    if kind <= 8:
        ping_id = ch.choice(interesting_ids()) if coin(ch, 30) else _uuid(ch)
        return envelope(3, [(1, ping_id)]), "ping"
    if kind == 9:
        pong_id = ch.choice(interesting_ids()) if coin(ch, 30) else _uuid(ch)
        return envelope(4, [(1, pong_id), (2, ch.choice(interesting_ids()))]), "pong"
    if kind == 10:
        message = ch.choice(ERROR_MESSAGES) if coin(ch, 60) else _text(ch, 80)
        return envelope(5, [(1, _uuid(ch)), (2, message)]), "error"
    if kind == 11:
        hs = ch.choice(p.handshakes)
        return (hs.init[4:] if coin(ch, 50) else hs.ack[4:]), "handshake"
    if kind == 12:
        return encode_fields([(ch.choice((7, 8, 100, 2**29 - 1)), 2, ch.binary(8))]), "unknown"
    if kind == 13 and big:
        # The largest Envelope a node must accept, or one byte more.
        size = model.MAX_MESSAGE + ch.choice((0, 1))
        head = envelope(6, [(1, b"u")])  # 0x32 len 0x0a 0x01 'u', then the value
        value = bytes(size - len(head) - 6)
        body = encode_fields([(1, 2, b"u"), (2, 2, value)])
        plaintext = encode_fields([(6, 2, body)])
        assert len(plaintext) == size, (len(plaintext), size)
        return plaintext, f"big{size}"
    return envelope(3, [(1, _uuid(ch))]), "ping"


def _uuid(ch: Chooser) -> bytes:
    n = ch.integer(0, 2**32 - 1)
    return f"{n:08x}-0000-4000-8000-{n:012x}".encode()


def gen_script(ch: Chooser, size: int, big: bool = False) -> tuple[list[bytes], list[str]]:
    """C{size} plaintexts, a quarter of them mutated at the protobuf level."""
    plaintexts, notes = [], []
    for _ in range(size):
        plaintext, name = gen_plaintext(ch, big)
        if coin(ch, 25):
            for _ in range(ch.integer(1, 2)):
                plaintext, how = mutate_proto(ch, plaintext, pieces(), messages())
                name += f"+{how}"
        plaintexts.append(plaintext)
        notes.append(name)
    return plaintexts, notes


def seal_all(direction: model.Direction, plaintexts: Sequence[bytes]) -> bytes:
    return b"".join(direction.seal(p) for p in plaintexts)


def _model_keys(config: model.Config, first: bytes) -> model.Keys | None:
    """The keys a (possibly noncanonical) handshake frame really gives, if valid."""
    m = model.ModelConnection(config)
    try:
        m.receive(first)
    except model.ModelGap:
        return None
    return None if m.closed else m.keys


def _mutate_handshake(ch: Chooser, body: bytes, notes: list[str]) -> bytes:
    for _ in range(ch.integer(1, 3)):
        body, how = mutate_proto(ch, body, pieces(), messages())
        notes.append(f"proto:{how}")
    return body


# Generators -------------------------------------------------------------------------


def gen_handshake_case(ch: Chooser, role: str) -> ConnCase:
    """
    A responder case (a mutated Init, then frames sealed with k_ir) or an
    initiator case (a mutated Ack, then frames sealed with k_ri).
    """
    p = pool()
    mode = ch.integer(0, 99)
    notes: list[str] = []
    if mode < 8:
        stream = ch.binary(200) if coin(ch, 50) else frame(ch.binary(120)) + ch.binary(40)
        return ConnCase(role, b"", stream, gen_cuts(ch, len(stream)), notes=("random",))
    responder = role == "responder"
    hs = ch.choice(p.to_responder if responder else p.to_initiator)
    body = (hs.init if responder else hs.ack)[4:]
    if mode < 20:
        body, code = ch.choice(p.bad_inits if responder else p.bad_acks)
        notes.append(f"bad:{code}")
    keys = model.Keys(hs.th, hs.k_ir, hs.k_ri)
    if coin(ch, 45):
        body = _mutate_handshake(ch, body, notes)
        if coin(ch, 60):
            config = p.responder_config if responder else p.initiator_config
            resealed = _model_keys(config, frame(body))
            if resealed is not None:
                keys = resealed
                notes.append("resealed")
    plaintexts, kinds = gen_script(ch, ch.integer(0, 5), big=coin(ch, 1))
    if responder and coin(ch, 80):
        plaintexts.insert(0, b"")  # the key confirmation
    stream = frame(body) + seal_all(
        model.Direction(keys.k_ir if responder else keys.k_ri), plaintexts
    )
    notes += kinds
    if coin(ch, 45):
        stream, how = mutate_stream(ch, stream, donors(), ch.integer(1, 3))
        notes += how
    bounds = [b for _, b in model.frames_of(stream)]
    return ConnCase(role, b"", stream, gen_cuts(ch, len(stream), bounds), notes=tuple(notes))


def gen_transport_case(ch: Chooser) -> ConnCase:
    """A complete connection (either role), then mutated transport frames."""
    p = pool()
    role = ch.choice(("responder", "initiator"))
    hs: Handshake
    if role == "responder":
        hs = ch.choice(p.to_responder)
        setup = hs.init + hs.confirmation
        direction = model.Direction(hs.k_ir)
        direction.seal(b"")  # the key confirmation took counter 0
    else:
        hs = ch.choice(p.to_initiator)
        setup = hs.ack
        direction = model.Direction(hs.k_ri)
    notes: list[str] = []
    if coin(ch, 1) and coin(ch, 30):
        # Across a rekey: frames 1..1,004 under one direction.
        plaintexts = [b""] * 1000 + gen_script(ch, 4)[0]
        notes.append("rekey")
    elif coin(ch, 4):
        stream = ch.binary(100)
        return ConnCase(role, setup, stream, gen_cuts(ch, len(stream)), None, ("random",))
    else:
        plaintexts, notes = gen_script(ch, ch.integer(1, 10), big=coin(ch, 1))
    original = seal_all(direction, plaintexts)
    stream = original
    if coin(ch, 75):
        stream, how = mutate_stream(ch, stream, donors(), ch.integer(1, 3))
        notes += how
    bounds = [b for _, b in model.frames_of(stream)]
    cuts = gen_cuts(ch, len(stream), bounds)
    return ConnCase(role, setup, stream, cuts, original, tuple(notes))


def gen_buffer_case(ch: Chooser) -> BufferCase:
    """Raw bytes, frames of arbitrary bodies, or sealed frames; then mutated."""
    mode = ch.integer(0, 2)
    if mode == 0:
        stream = ch.binary(300)
        return BufferCase(stream, gen_cuts(ch, len(stream)), False, ("random",))
    if mode == 1:
        stream = b"".join(frame(ch.binary(40)) for _ in range(ch.integer(0, 8)))
        sealed = False
    else:
        plaintexts, _ = gen_script(ch, ch.integer(0, 6))
        stream = seal_all(model.Direction(BUFFER_KEY), plaintexts)
        sealed = True
    notes: list[str] = []
    if coin(ch, 60):
        stream, notes = mutate_stream(ch, stream, donors(), ch.integer(1, 3))
    bounds = [b for _, b in model.frames_of(stream)]
    return BufferCase(stream, gen_cuts(ch, len(stream), bounds), sealed, tuple(notes))


#: Clock moves: the handshake timeout (10 s), the Ping flood window (30 s),
#: the keep-alive interval (60 s) and pong timeout (30 s), on either side.
ADVANCES = (1.0, 9.9, 10.0, 29.9, 30.0, 31.0, 60.0, 95.0)


def gen_twisted_case(ch: Chooser) -> TwistedCase:
    """A connection case for either role, and clock advances between reads."""
    which = ch.integer(0, 2)
    if which == 2:
        conn = gen_transport_case(ch)
    else:
        conn = gen_handshake_case(ch, ("responder", "initiator")[which])
    advances = tuple(
        ch.choice(ADVANCES) if n and coin(ch, 30) else 0.0 for n in range(len(conn.reads()))
    )
    return TwistedCase(conn, advances)


def generate(target: str, ch: Chooser) -> Case:
    """One input for C{target}."""
    if target in ("responder", "initiator"):
        return gen_handshake_case(ch, target)
    if target == "transport":
        return gen_transport_case(ch)
    if target == "buffer":
        return gen_buffer_case(ch)
    if target == "twisted":
        return gen_twisted_case(ch)
    raise ValueError(f"unknown target {target!r}")


def random_case(target: str, rng: random.Random) -> Case:
    return generate(target, RandomChooser(rng))


# Hypothesis -----------------------------------------------------------------------


class HypothesisChooser:
    """A L{Chooser} drawing from Hypothesis, so failures shrink."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(min_value=lo, max_value=hi))

    def choice(self, items: Sequence[T]) -> T:
        return self.draw(st.sampled_from(items))

    def binary(self, max_size: int) -> bytes:
        return self.draw(st.binary(max_size=max_size))

    def blob(self, size: int) -> bytes:
        seed = self.draw(st.integers(min_value=0, max_value=2**32 - 1))
        return random.Random(seed).randbytes(size)


@st.composite
def cases(draw: st.DrawFn, target: str) -> Case:
    """Inputs for C{target} (one of L{TARGETS})."""
    return generate(target, HypothesisChooser(draw))


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """A serialized Envelope as the generators make them: valid or mutated."""
    ch = HypothesisChooser(draw)
    if ch.integer(0, 3):
        plaintexts, _ = gen_script(ch, 1)
        return plaintexts[0]
    p = pool()
    hs = ch.choice(p.handshakes)
    return _mutate_handshake(ch, ch.choice((hs.init[4:], hs.ack[4:])), [])


def responder_cases() -> st.SearchStrategy[Case]:
    return cases("responder")


def initiator_cases() -> st.SearchStrategy[Case]:
    return cases("initiator")


def transport_cases() -> st.SearchStrategy[Case]:
    return cases("transport")


def buffer_cases() -> st.SearchStrategy[Case]:
    return cases("buffer")


def twisted_cases() -> st.SearchStrategy[Case]:
    return cases("twisted")


__all__ = [
    "TARGETS",
    "BufferCase",
    "Case",
    "ConnCase",
    "TwistedCase",
    "buffer_cases",
    "cases",
    "envelopes",
    "generate",
    "initiator_cases",
    "parse_reproducer",
    "random_case",
    "responder_cases",
    "transport_cases",
    "twisted_cases",
]
