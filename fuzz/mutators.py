"""
Choosers and mutators.

Every generator and mutator takes a L{Chooser}, so one body of code serves
three drivers: L{RandomChooser} (C{random.Random}, the plain loop of
L{fuzz.run}), a Hypothesis chooser (L{fuzz.strategies}, which shrinks) and
an atheris chooser (L{fuzz.atheris_target}, coverage-guided).

Mutators:

  - bytes: bit flips, interesting byte values, truncation, deletion,
    insertion, duplication, splicing from other input;
  - frames (found by their length prefixes): length-field edits, drop,
    duplicate, swap, move, insert a foreign or replayed frame, truncate;
  - protobuf (L{mutate_proto}): the message's fields decoded with the
    model's parser, then a field's value changed (recursively into embedded
    messages), a field added (unknown numbers, every wire type, groups),
    duplicated, deleted, renumbered (another oneof member, field 0), given
    the wrong wire type or an invalid one, fields reordered, varints
    re-encoded non-minimally, another message appended (a protobuf merge),
    and re-encoded.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from fuzz import model

T = TypeVar("T")


class Chooser(Protocol):
    """Where the choices of a generator come from."""

    def integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""

    def choice(self, items: Sequence[T]) -> T:
        """One of C{items} (not empty)."""

    def binary(self, max_size: int) -> bytes:
        """0..max_size arbitrary bytes (small: at most a few hundred)."""

    def blob(self, size: int) -> bytes:
        """Exactly C{size} bytes, cheap even when large (not shrunk byte by byte)."""


class RandomChooser:
    """A L{Chooser} on C{random.Random}."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._random = rng.random

    def integer(self, lo: int, hi: int) -> int:
        # random() is several times faster than randint(); spans here are < 2**53.
        return lo + int(self._random() * (hi - lo + 1))

    def choice(self, items: Sequence[T]) -> T:
        return items[int(self._random() * len(items))]

    def binary(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))

    def blob(self, size: int) -> bytes:
        return self.rng.randbytes(size)


def coin(ch: Chooser, percent: int) -> bool:
    """True with probability C{percent} %."""
    return ch.integer(0, 99) < percent


# Interesting values ------------------------------------------------------------

INTERESTING_BYTES = (0x00, 0x01, 0x02, 0x03, 0x04, 0x07, 0x08, 0x0A, 0x12, 0x32, 0x7F, 0x80, 0xFF)
#: Lengths around every boundary of WIRE.md section 2.
INTERESTING_LENGTHS = (
    0, 1, 2, 3, 15, 16, 17, 20, 1023, 1024, 1025, 65535, 65536,
    model.MAX_MESSAGE, model.MAX_MESSAGE + 15, model.MAX_MESSAGE + 16,
    model.MAX_MESSAGE + 17, 2**31 - 1, 2**31, 2**32 - 1,
)  # fmt: skip


def interesting_ids() -> tuple[bytes, ...]:
    """Ids: valid ones at the edges, invalid ones just past them, invalid UTF-8."""
    return (
        b"",
        b"i",
        b"\x00",
        b"a" * 64,
        b"a" * 65,
        "\u00e9".encode() * 32,
        "\u00e9".encode() * 32 + b"a",
        "\U0001f600".encode() * 16,
        "\U0001f600".encode() * 17,
        b"\xff",
        b"\xc3",
        b"\xed\xa0\x80",
        b"\xc0\x80",
        b"0b07d2a0-0000-4000-8000-00000000i001",
    )


def interesting_keys(pool_keys: Sequence[bytes]) -> tuple[bytes, ...]:
    """Public keys: the pool's, and every way of not being one (WIRE.md section 1)."""
    p = model.P.to_bytes(32, "big")
    key = pool_keys[0]
    off_curve = b"\x02" + (5).to_bytes(32, "big")  # x = 5: 5^3 + 7 is not a square mod p
    assert not model.is_valid_key(off_curve)
    return (
        *pool_keys,
        b"",
        key[:32],
        key + b"\x00",
        b"\x04" + key[1:],
        b"\x00" + key[1:],
        bytes((key[0] ^ 1,)) + key[1:],  # the other y: valid, but another key
        b"\x02" + p,
        b"\x03" + (model.P + 1).to_bytes(32, "big"),
        b"\x02" + b"\xff" * 32,
        off_curve,
        b"\x02" + bytes(32),
    )


def interesting_signatures(pool_sigs: Sequence[bytes]) -> tuple[bytes, ...]:
    """Signatures: the pool's, high-S twins, r or s at 0, n, n - 1, wrong lengths."""
    sig = pool_sigs[0]
    r, s = sig[:32], int.from_bytes(sig[32:], "big")
    n = model.N.to_bytes(32, "big")
    n1 = (model.N - 1).to_bytes(32, "big")
    half = model.HALF_N.to_bytes(32, "big")
    half1 = (model.HALF_N + 1).to_bytes(32, "big")
    return (
        *pool_sigs,
        r + (model.N - s).to_bytes(32, "big"),
        bytes(64),
        bytes(32) + sig[32:],
        r + bytes(32),
        n + sig[32:],
        r + n,
        n1 + half,
        r + half1,
        sig[:63],
        sig + b"\x00",
        b"",
    )


# Bytes -------------------------------------------------------------------------


def flip_bits(ch: Chooser, data: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(ch.integer(1, 4)):
        out[ch.integer(0, len(out) - 1)] ^= 1 << ch.integer(0, 7)
    return bytes(out)


def set_byte(ch: Chooser, data: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    out[ch.integer(0, len(out) - 1)] = ch.choice(INTERESTING_BYTES)
    return bytes(out)


def truncate(ch: Chooser, data: bytes) -> bytes:
    return data[: ch.integer(0, max(0, len(data) - 1))]


def delete_range(ch: Chooser, data: bytes) -> bytes:
    if not data:
        return data
    start = ch.integer(0, len(data) - 1)
    return data[:start] + data[start + ch.integer(1, min(64, len(data) - start)) :]


def insert_bytes(ch: Chooser, data: bytes) -> bytes:
    at = ch.integer(0, len(data))
    return data[:at] + ch.binary(32) + data[at:]


def duplicate_range(ch: Chooser, data: bytes) -> bytes:
    if not data:
        return data
    start = ch.integer(0, len(data) - 1)
    end = ch.integer(start + 1, min(len(data), start + 128))
    at = ch.integer(0, len(data))
    return data[:at] + data[start:end] + data[at:]


def splice(ch: Chooser, data: bytes, other: bytes) -> bytes:
    """A range of C{data} replaced with a range of C{other}."""
    if not other:
        return data
    start = ch.integer(0, len(data))
    end = ch.integer(start, min(len(data), start + 64))
    o_start = ch.integer(0, len(other) - 1)
    o_end = ch.integer(o_start, min(len(other), o_start + 128))
    return data[:start] + other[o_start:o_end] + data[end:]


BYTE_MUTATORS: tuple[Callable[[Chooser, bytes], bytes], ...] = (
    flip_bits,
    flip_bits,
    set_byte,
    truncate,
    delete_range,
    insert_bytes,
    duplicate_range,
)


def mutate_bytes(ch: Chooser, data: bytes, donors: Sequence[bytes]) -> tuple[bytes, str]:
    """One byte-level mutation; returns the result and its name."""
    if donors and coin(ch, 15):
        return splice(ch, data, ch.choice(donors)), "splice"
    op = ch.choice(BYTE_MUTATORS)
    return op(ch, data), op.__name__


# Frames --------------------------------------------------------------------------


def split_frames(stream: bytes) -> tuple[list[bytes], bytes]:
    """The whole frames of C{stream} and what is left after them."""
    bounds = model.frames_of(stream)
    frames = [stream[a:b] for a, b in bounds]
    return frames, stream[bounds[-1][1] :] if bounds else stream


def mutate_frames(ch: Chooser, stream: bytes, donors: Sequence[bytes]) -> tuple[bytes, str]:
    """One frame-level mutation of a stream of frames; its result and name."""
    frames, rest = split_frames(stream)
    if not frames:
        return mutate_bytes(ch, stream, donors)
    k = ch.integer(0, len(frames) - 1)
    op = ch.integer(0, 7)
    if op <= 1:
        body = len(frames[k]) - 4
        length = ch.choice((*INTERESTING_LENGTHS, body - 1, body + 1, body + 16, max(0, body - 16)))
        if coin(ch, 10):
            length = ch.integer(0, 2**32 - 1)
        frames[k] = (length % 2**32).to_bytes(4, "big") + frames[k][4:]
        name = "set_length"
    elif op == 2:
        del frames[k]
        name = "drop_frame"
    elif op == 3:
        frames.insert(ch.integer(0, len(frames)), frames[k])
        name = "duplicate_frame"
    elif op == 4:
        j = ch.integer(0, len(frames) - 1)
        frames[k], frames[j] = frames[j], frames[k]
        name = "swap_frames"
    elif op == 5:
        moved = frames.pop(k)
        frames.insert(ch.integer(0, len(frames)), moved)
        name = "move_frame"
    elif op == 6 and donors:
        foreign_frames, _ = split_frames(ch.choice(donors))
        foreign = ch.choice(foreign_frames) if foreign_frames else ch.binary(40)
        frames.insert(ch.integer(0, len(frames)), foreign)
        name = "foreign_frame"
    else:
        frames[k] = frames[k][: ch.integer(0, len(frames[k]) - 1)]
        name = "truncate_frame"
        frames = frames[: k + 1]
        rest = b""
    return b"".join(frames) + rest, name


def mutate_stream(
    ch: Chooser, stream: bytes, donors: Sequence[bytes], rounds: int
) -> tuple[bytes, list[str]]:
    """C{rounds} byte- or frame-level mutations."""
    names = []
    for _ in range(rounds):
        if coin(ch, 50):
            stream, name = mutate_frames(ch, stream, donors)
        else:
            stream, name = mutate_bytes(ch, stream, donors)
        names.append(name)
    return stream, names


# Protobuf -------------------------------------------------------------------------

Field = tuple[int, int, object]  # number, wire type, value (int, bytes, group bytes)


def encode_field(number: int, wire: int, value: object, pad: int = 0) -> bytes:
    """
    One field.  C{pad} extra bytes make the tag's varint (and a length's)
    non-minimal: 1..4 keep it within upb's 5 bytes, more make it invalid.
    """
    out = nonminimal(number << 3 | wire, pad)
    if wire == 0:
        assert isinstance(value, int)
        out += model.varint(value % 2**64)
    elif wire == 1:
        assert isinstance(value, int)
        out += (value % 2**64).to_bytes(8, "little")
    elif wire == 5:
        assert isinstance(value, int)
        out += (value % 2**32).to_bytes(4, "little")
    elif wire == 2:
        assert isinstance(value, bytes)
        out += nonminimal(len(value), pad) + value
    elif wire == 3:
        assert isinstance(value, bytes)
        out += value  # the group's fields and its end tag, as decoded
    # wire types 4, 6 and 7: the tag alone
    return out


def nonminimal(n: int, pad: int) -> bytes:
    v = bytearray(model.varint(n))
    for _ in range(pad):
        v[-1] |= 0x80
        v.append(0)
    return bytes(v)


def encode_fields(fields: Sequence[Field]) -> bytes:
    return b"".join(encode_field(n, w, v) for n, w, v in fields)


def decode_fields(data: bytes) -> list[Field] | None:
    try:
        return model.fields(data)
    except model.WireError:
        return None


def random_field(ch: Chooser) -> Field:
    """A field of any number and wire type, usually unknown to every message here."""
    number = ch.choice((1, 2, 3, 4, 5, 6, 7, 8, 15, 16, 100, 2047, 19000, 2**29 - 1))
    wire = ch.choice((0, 0, 1, 2, 2, 2, 3, 5))
    value: object
    if wire == 0:
        value = ch.choice((0, 1, 127, 128, 2**32, 2**63, 2**64 - 1))
    elif wire in (1, 5):
        value = ch.integer(0, 2**32 - 1)
    elif wire == 2:
        value = ch.binary(24)
    else:
        inner = encode_fields([random_field(ch)]) if coin(ch, 30) else b""
        value = inner + model.varint(number << 3 | 4)
    return number, wire, value


def mutate_value(ch: Chooser, value: bytes, pieces: Sequence[bytes]) -> bytes:
    """A length-delimited value changed: spliced, replaced or byte-mutated."""
    op = ch.integer(0, 9)
    if op <= 3 and pieces:
        return ch.choice(pieces)
    if op == 4:
        return b""
    if op == 5:
        return value + ch.binary(8)
    mutated, _ = mutate_bytes(ch, value, ())
    return mutated


def mutate_proto(
    ch: Chooser, data: bytes, pieces: Sequence[bytes], extra: Sequence[bytes] = (), depth: int = 0
) -> tuple[bytes, str]:
    """
    One protobuf-level mutation of the serialized message C{data}.

    @param pieces: values to splice into length-delimited fields (keys,
        signatures, ids, whole messages).
    @param extra: whole serialized messages to append (a protobuf merge).
    """
    fields = decode_fields(data)
    if fields is None:
        mutated, name = mutate_bytes(ch, data, ())
        return mutated, "bytes:" + name
    op = ch.integer(0, 12)
    if not fields and op not in (2, 10, 11):
        op = 2
    if op <= 1:
        k = ch.integer(0, len(fields) - 1)
        number, wire, value = fields[k]
        if wire == 2 and isinstance(value, bytes) and depth < 3 and coin(ch, 40):
            value, name = mutate_proto(ch, value, pieces, (), depth + 1)
            name = f"in {number}:{name}"
        elif wire == 2 and isinstance(value, bytes):
            value, name = mutate_value(ch, value, pieces), "value"
        elif wire == 3:
            value, name = model.varint(number << 3 | 4), "empty_group"
        else:
            value, name = ch.choice((0, 1, 2**63, 2**64 - 1)), "number"
        fields[k] = (number, wire, value)
        return encode_fields(fields), name
    if op == 2:
        fields.insert(ch.integer(0, len(fields)), random_field(ch))
        return encode_fields(fields), "add_field"
    if op == 3:
        k = ch.integer(0, len(fields) - 1)
        number, wire, value = fields[k]
        if wire == 2 and isinstance(value, bytes) and coin(ch, 50):
            value = mutate_value(ch, value, pieces)
        fields.insert(ch.integer(0, len(fields)), (number, wire, value))
        return encode_fields(fields), "duplicate_field"
    if op == 4:
        del fields[ch.integer(0, len(fields) - 1)]
        return encode_fields(fields), "delete_field"
    if op == 5:
        k = ch.integer(0, len(fields) - 1)
        number, wire, value = fields[k]
        fields[k] = (ch.choice((0, 1, 2, 3, 4, 5, 6, 7, number + 8)), wire, value)
        return encode_fields(fields), "renumber"
    if op == 6:
        k = ch.integer(0, len(fields) - 1)
        number, wire, value = fields[k]
        new = ch.choice((0, 1, 2, 5, 3))
        if new == wire:
            new = 0 if wire == 2 else 2
        converted: object
        if new == 2:
            converted = value if isinstance(value, bytes) else model.varint(_int(value))
        elif new == 3:
            converted = model.varint(number << 3 | 4)
        else:
            converted = len(value) if isinstance(value, bytes) else value
        fields[k] = (number, new, converted)
        return encode_fields(fields), "wire_type"
    if op == 7:
        at = ch.integer(0, len(fields))
        raw = encode_fields(fields[:at])
        bad = nonminimal(ch.choice((1, 2, 6, 7)) << 3 | ch.choice((4, 6, 7)), 0)
        if coin(ch, 30):
            bad = ch.choice((b"\x00", b"\x02\x00", b"\x04"))  # field number 0
        return raw + bad + encode_fields(fields[at:]), "bad_tag"
    if op == 8:
        order = list(range(len(fields)))
        for i in range(len(order) - 1, 0, -1):
            j = ch.integer(0, i)
            order[i], order[j] = order[j], order[i]
        return encode_fields([fields[i] for i in order]), "reorder"
    if op == 9:
        pad = ch.choice((1, 2, 3, 4, 4, 5))
        k = ch.integer(0, len(fields) - 1)
        return (
            encode_fields(fields[:k]) + encode_field(*fields[k], pad=pad)
            + encode_fields(fields[k + 1 :]),
            f"nonminimal{pad}",
        )  # fmt: skip
    if op == 10 and extra:
        other = ch.choice(extra)
        return (other + data if coin(ch, 30) else data + other), "merge"
    if op == 11:
        cut = ch.integer(0, max(0, len(data) - 1))
        return data[:cut], "truncate"
    mutated, name = mutate_bytes(ch, data, ())
    return mutated, "bytes:" + name


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def gen_cuts(ch: Chooser, size: int, boundaries: Sequence[int] = ()) -> tuple[int, ...]:
    """
    Where to split a stream of C{size} bytes into reads: nowhere, at random
    points, byte by byte (small streams), or just around frame boundaries.
    """
    mode = ch.integer(0, 99)
    if mode < 35 or size <= 1:
        return ()
    if mode < 75:
        return tuple(sorted({ch.integer(1, size - 1) for _ in range(ch.integer(1, 6))}))
    if mode < 85 and size <= 300:
        return tuple(range(1, size))
    points = set()
    for b in boundaries:
        for d in (-1, 0, 1, 4, 5):
            if 0 < b + d < size and coin(ch, 50):
                points.add(b + d)
    return tuple(sorted(points))


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """C{data} cut at C{cuts} (sorted, inside 1..len-1)."""
    out = []
    start = 0
    for cut in cuts:
        out.append(data[start:cut])
        start = cut
    out.append(data[start:])
    return out
