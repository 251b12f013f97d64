"""
Micro-benchmark of botd2's sans-IO core against the bare primitives it uses.

Run from the repository root::

    python -m bench.core            # about 40 s: 7 rounds of 0.5 s per item
    python -m bench.core --quick    # a smoke run of a few seconds

What is measured, all in one process and one run, so that ratios mean
something on a shared, noisy machine:

  1. a full in-memory handshake, both sides (Initiator + Responder, their
     construction included: each makes its ephemeral key and ids);
  2. the bare crypto of one handshake through C{botd2._secp256k1} (and, for
     reference, through coincurve's own API) with no protocol code;
  3. frame seal + open at 100 B and 64 KiB through C{CipherState}, through
     the sans-IO C{Connection} (C{send_envelope_bytes} + C{receive_data}),
     and through a bare C{AESGCM} with the same nonce and AAD shape.

Every item is timed in every round; the order rotates round by round so that
drift hits all alike.  Ratios are the median of the per-round ratios.  The
exit status is 0 whether or not a target is met: the machine is noisy.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import shlex
import statistics
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from time import perf_counter

import coincurve
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf import any_pb2

from botd2 import _secp256k1 as c
from botd2._version import __version__ as botd2_version
from botd2.botd2_pb2 import Envelope
from botd2.connection import Initiator, PayloadReceived, Responder
from botd2.frames import TAG_SIZE, CipherState
from botd2.keys import PrivateKey

#: The targets of the issue.
HANDSHAKE_TARGET = 1.5
FRAME_TARGET = 1.3
#: The earlier coincurve measurement the issue quotes, µs per side.
ISSUE_BARE_US = 190.0

SMALL = 100
LARGE = 64 * 1024

Run = Callable[[int], None]


@dataclass
class Item:
    """
    One measured thing.

    @ivar run: does C{n} operations.
    @ivar nbytes: payload bytes per operation (for MB/s), or 0.
    @ivar sides: 2 when an operation is a whole handshake (both sides).
    @ivar n: operations per round, set by calibration.
    @ivar times: seconds per operation, one per round.
    """

    key: str
    label: str
    run: Run
    nbytes: int = 0
    sides: int = 1
    n: int = 0
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)


# Timing -------------------------------------------------------------------


def _timed(run: Run, n: int) -> float:
    """Seconds for C{run(n)}, after a collection so every run starts alike."""
    gc.collect()
    t0 = perf_counter()
    run(n)
    return perf_counter() - t0


def _calibrate(item: Item, target: float) -> None:
    """Warm up, then pick C{item.n} so that one round takes about C{target} s."""
    item.run(1)
    n = 1
    while True:
        t = _timed(item.run, n)
        if t >= target / 5:
            item.n = max(1, round(n * target / t))
            return
        n *= 2 if t > target / 50 else 10


def measure(items: list[Item], rounds: int, target: float) -> None:
    """Calibrate, then time every item once per round, rotating the order."""
    for item in items:
        _calibrate(item, target)
    for k in range(rounds):
        order = items[k % len(items) :] + items[: k % len(items)]
        for item in order:
            item.times.append(_timed(item.run, item.n) / item.n)


def per_round_ratio(a: Item, b: Item) -> tuple[float, float]:
    """Median of the per-round ratios a/b, and the ratio of the minima."""
    return statistics.median(x / y for x, y in zip(a.times, b.times, strict=True)), a.best / b.best


# The handshake --------------------------------------------------------------


def handshake_pair(a: PrivateKey, b: PrivateKey) -> tuple[Initiator, Responder]:
    """One full in-memory handshake; both ends open."""
    i = Initiator(a, b.public_key)
    r = Responder(b)
    i.initiate()
    r.receive_data(i.data_to_send())
    i.receive_data(r.data_to_send())
    r.receive_data(i.data_to_send())
    if not (i.handshake_complete and r.handshake_complete):
        raise RuntimeError("the handshake did not complete")
    return i, r


def bench_handshake(a: PrivateKey, b: PrivateKey) -> Run:
    """Whole handshakes through the sans-IO state machines."""
    b_pub = b.public_key

    def run(n: int) -> None:
        for _ in range(n):
            i = Initiator(a, b_pub)
            r = Responder(b)
            i.initiate()
            r.receive_data(i.data_to_send())
            i.receive_data(r.data_to_send())
            r.receive_data(i.data_to_send())
        if not (i.handshake_complete and r.handshake_complete):
            raise RuntimeError("the handshake did not complete")

    return run


_TRANSPORT_INFO = b"botd2/1 transport keys"
_TH = bytes(range(32))  # stands for the transcript hash, the HKDF salt


def _hkdf64(ss: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=64, salt=_TH, info=_TRANSPORT_INFO).derive(ss)


def bare_handshake(a: PrivateKey, b: PrivateKey) -> tuple[bytes, bytes]:
    """
    The crypto of one handshake, both sides, through C{botd2._secp256k1}.

    Per side: one ephemeral keygen (random secret, pubkey_create, serialize),
    one sign, one verify, the parses the protocol needs (the responder parses
    the sender's and the initiator's ephemeral keys, the initiator the
    responder's ephemeral key; the responder's static key is known already),
    one ECDH, one HKDF-SHA-256 to 64 bytes, two AESGCM objects.

    @return: both sides' HKDF output, for a sanity check.
    """
    a_secret, b_secret = a.secret_bytes(), b.secret_bytes()
    a_pub, b_pub = bytes(a.public_key), bytes(b.public_key)
    b_point = c.pubkey_parse(b_pub)  # the initiator knows whom it dials
    ab, ba = a_pub + b_pub, b_pub + a_pub
    # Initiator: ephemeral key, signed Init.
    ie = c.random_secret()
    ie_pub = c.pubkey_serialize(c.pubkey_create(ie))
    init_sig = c.sign(a_secret, ab + ie_pub)
    # Responder: parse sender and ephemeral, verify; ephemeral key, signed Ack; keys.
    sender = c.pubkey_parse(a_pub)
    i_eph = c.pubkey_parse(ie_pub)
    if not c.verify(sender, init_sig, ab + ie_pub):
        raise RuntimeError("Init signature")
    re = c.random_secret()
    re_pub = c.pubkey_serialize(c.pubkey_create(re))
    ack_sig = c.sign(b_secret, ba + re_pub)
    okm_r = _hkdf64(c.ecdh(re, i_eph))
    AESGCM(okm_r[:32]), AESGCM(okm_r[32:])
    # Initiator: parse the responder's ephemeral, verify the Ack; keys.
    r_eph = c.pubkey_parse(re_pub)
    if not c.verify(b_point, ack_sig, ba + re_pub):
        raise RuntimeError("Ack signature")
    okm_i = _hkdf64(c.ecdh(ie, r_eph))
    AESGCM(okm_i[:32]), AESGCM(okm_i[32:])
    return okm_i, okm_r


def bench_bare_handshake(a: PrivateKey, b: PrivateKey) -> Run:
    """L{bare_handshake} inlined in a loop (the same calls, no function call)."""
    a_secret, b_secret = a.secret_bytes(), b.secret_bytes()
    a_pub, b_pub = bytes(a.public_key), bytes(b.public_key)
    b_point = c.pubkey_parse(b_pub)
    ab, ba = a_pub + b_pub, b_pub + a_pub
    random_secret, pubkey_create, pubkey_serialize = (
        c.random_secret,
        c.pubkey_create,
        c.pubkey_serialize,
    )
    sign, verify, pubkey_parse, ecdh = c.sign, c.verify, c.pubkey_parse, c.ecdh

    def run(n: int) -> None:
        for _ in range(n):
            ie = random_secret()
            ie_pub = pubkey_serialize(pubkey_create(ie))
            init_sig = sign(a_secret, ab + ie_pub)
            sender = pubkey_parse(a_pub)
            i_eph = pubkey_parse(ie_pub)
            verify(sender, init_sig, ab + ie_pub)
            re = random_secret()
            re_pub = pubkey_serialize(pubkey_create(re))
            ack_sig = sign(b_secret, ba + re_pub)
            okm_r = _hkdf64(ecdh(re, i_eph))
            AESGCM(okm_r[:32]), AESGCM(okm_r[32:])
            r_eph = pubkey_parse(re_pub)
            verify(b_point, ack_sig, ba + re_pub)
            okm_i = _hkdf64(ecdh(ie, r_eph))
            AESGCM(okm_i[:32]), AESGCM(okm_i[32:])

    return run


def bench_coincurve_handshake(a: PrivateKey, b: PrivateKey) -> Run:
    """The same operations through coincurve's public API (DER signatures)."""
    a_key = coincurve.PrivateKey(a.secret_bytes())
    b_key = coincurve.PrivateKey(b.secret_bytes())
    a_pub, b_pub = bytes(a.public_key), bytes(b.public_key)
    b_point = coincurve.PublicKey(b_pub)
    ab, ba = a_pub + b_pub, b_pub + a_pub
    PrivKey, PubKey = coincurve.PrivateKey, coincurve.PublicKey

    def run(n: int) -> None:
        for _ in range(n):
            ie = PrivKey()
            ie_pub = ie.public_key.format()
            init_sig = a_key.sign(ab + ie_pub)
            sender = PubKey(a_pub)
            i_eph = PubKey(ie_pub)
            sender.verify(init_sig, ab + ie_pub)
            re = PrivKey()
            re_pub = re.public_key.format()
            ack_sig = b_key.sign(ba + re_pub)
            okm_r = _hkdf64(re.ecdh(i_eph.format()))
            AESGCM(okm_r[:32]), AESGCM(okm_r[32:])
            r_eph = PubKey(re_pub)
            b_point.verify(ack_sig, ba + re_pub)
            okm_i = _hkdf64(ie.ecdh(r_eph.format()))
            AESGCM(okm_i[:32]), AESGCM(okm_i[32:])

    return run


# Frames --------------------------------------------------------------------

_NONCE = struct.Struct(">4xQ")  # 4 zero bytes || 8-byte counter, as WIRE.md
_KEY = bytes(range(32))


def bench_cipherstate(size: int) -> Run:
    """C{CipherState.seal} then C{CipherState.open}, one direction."""
    tx, rx = CipherState(_KEY), CipherState(_KEY)
    plaintext = os.urandom(size)
    if rx.open(*tx.seal(plaintext)) != plaintext:
        raise RuntimeError("CipherState round trip")

    def run(n: int) -> None:
        seal, open_ = tx.seal, rx.open
        for _ in range(n):
            header, body = seal(plaintext)
            open_(header, body)

    return run


def bench_bare_aesgcm(size: int) -> Run:
    """AESGCM encrypt then decrypt: a packed counter nonce, the 4 length bytes as AAD."""
    aead = AESGCM(_KEY)
    plaintext = os.urandom(size)
    header = struct.pack(">I", size + TAG_SIZE)
    pack = _NONCE.pack

    def run(n: int) -> None:
        encrypt, decrypt = aead.encrypt, aead.decrypt
        for counter in range(n):
            nonce = pack(counter)
            decrypt(nonce, encrypt(nonce, plaintext, header), header)

    return run


def envelope_of_size(size: int) -> bytes:
    """A serialized C{Envelope{payload}} of exactly C{size} bytes."""
    for pad in range(8):
        for value_len in range(size, max(size - 128, 0) - 1, -1):
            packed = any_pb2.Any(
                type_url="type.googleapis.com/bench.Blob" + "x" * pad, value=bytes(value_len)
            )
            data = Envelope(payload=packed).SerializeToString()
            if len(data) == size:
                return data
    raise ValueError(f"no Envelope of {size} bytes")


def bench_connection(a: PrivateKey, b: PrivateKey, size: int) -> Run:
    """
    Initiator C{send_envelope_bytes} + C{data_to_send}, responder
    C{receive_data} (receive buffer, open in place, Envelope parse, event).
    """
    i, r = handshake_pair(a, b)
    envelope = envelope_of_size(size)
    i.send_envelope_bytes(envelope)
    events = r.receive_data(i.data_to_send())
    if not (len(events) == 1 and isinstance(events[0], PayloadReceived)):
        raise RuntimeError(f"unexpected events {events!r}")

    def run(n: int) -> None:
        send, take, receive = i.send_envelope_bytes, i.data_to_send, r.receive_data
        for _ in range(n):
            send(envelope)
            receive(take())
        if r.closed:
            raise RuntimeError("the responder closed the connection")

    return run


# Report ----------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def header(rounds: int, target: float, quick: bool) -> str:
    """The lines printed above the table."""
    from cryptography.hazmat.backends.openssl.backend import backend
    from google.protobuf.internal import api_implementation

    try:
        affinity = f", {len(os.sched_getaffinity(0))} usable"
    except AttributeError:
        affinity = ""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return "\n".join(
        [
            f"command:   {shlex.join(getattr(sys, 'orig_argv', sys.argv))}",
            f"python:    {platform.python_implementation()} {platform.python_version()}"
            f" ({sys.executable})",
            f"machine:   {platform.platform()}; {_cpu_model()};"
            f" {os.cpu_count()} CPUs{affinity}; load avg {load}",
            f"date:      {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC",
            f"libraries: botd2 {botd2_version}, coincurve {_version('coincurve')},"
            f" cryptography {_version('cryptography')}"
            f" ({backend.openssl_version_text()}),"
            f" protobuf {_version('protobuf')} ({api_implementation.Type()})",
            f"method:    time.perf_counter; {rounds} rounds of ~{target:g} s per item,"
            " order rotated each round; median and min over rounds; GC on"
            + (
                "\n           --quick: a smoke run, the figures are only indicative"
                if quick
                else ""
            ),
        ]
    )


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs"


def _verdict(ratio: float, limit: float) -> str:
    return "MET" if ratio <= limit else "MISSED"


def report(items: dict[str, Item]) -> str:
    """The table and the ratios."""
    lines = [
        f"{'item':<44} {'median':>12} {'min':>12} {'ops/s (med)':>13} {'MB/s (med)':>11}",
        "-" * 95,
    ]
    for item in items.values():
        rate = 1 / item.median
        mbs = f"{item.nbytes * rate / 1e6:,.1f}" if item.nbytes else "-"
        lines.append(
            f"{item.label:<44} {_us(item.median):>12} {_us(item.best):>12} {rate:>13,.0f} {mbs:>11}"
        )
        if item.sides == 2:
            lines.append(
                f"{'  per side (= total / 2)':<44} {_us(item.median / 2):>12}"
                f" {_us(item.best / 2):>12}"
            )
    lines += ["", "ratios (median of per-round ratios; ratio of minima in brackets):"]
    hs, bare = items["handshake"], items["bare"]
    med, mins = per_round_ratio(hs, bare)
    lines.append(
        f"  {'handshake / bare crypto (_secp256k1)':<46}{med:5.2f}x  [{mins:5.2f}x]"
        f"   target <= {HANDSHAKE_TARGET}x: {_verdict(med, HANDSHAKE_TARGET)}"
    )
    med, mins = per_round_ratio(hs, items["coincurve"])
    lines.append(f"  {'handshake / bare crypto (coincurve API)':<46}{med:5.2f}x  [{mins:5.2f}x]")
    lines.append(
        f"  {f'handshake per side / {ISSUE_BARE_US:g} µs (issue figure)':<46}"
        f"{hs.median / 2 * 1e6 / ISSUE_BARE_US:5.2f}x  [{hs.best / 2 * 1e6 / ISSUE_BARE_US:5.2f}x]"
    )
    for size in (SMALL, LARGE):
        bare_aes = items[f"aes{size}"]
        for path, what in (("cs", "CipherState seal+open"), ("conn", "Connection send+receive")):
            med, mins = per_round_ratio(items[f"{path}{size}"], bare_aes)
            line = (
                f"  {what} {_size(size)} / bare AESGCM".ljust(48)
                + f"{med:5.2f}x  [{mins:5.2f}x]  throughput {100 / med:5.1f}% of bare"
            )
            if path == "cs" and size == LARGE:
                line += f"   target <= {FRAME_TARGET}x: {_verdict(med, FRAME_TARGET)}"
            lines.append(line)
    return "\n".join(lines)


def _size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def build(a: PrivateKey, b: PrivateKey) -> dict[str, Item]:
    """Every item, in the order of the table."""
    okm_i, okm_r = bare_handshake(a, b)
    if okm_i != okm_r:
        raise RuntimeError("the bare handshake's two sides disagree")
    items = [
        Item("handshake", "full handshake, both sides (sans-IO)", bench_handshake(a, b), sides=2),
        Item("bare", "bare crypto, both sides (_secp256k1)", bench_bare_handshake(a, b), sides=2),
        Item(
            "coincurve",
            "bare crypto, both sides (coincurve API)",
            bench_coincurve_handshake(a, b),
            sides=2,
        ),
    ]
    for size in (SMALL, LARGE):
        items += [
            Item(
                f"cs{size}", f"CipherState seal+open {_size(size)}", bench_cipherstate(size), size
            ),
            Item(
                f"conn{size}",
                f"Connection send+receive {_size(size)}",
                bench_connection(a, b, size),
                size,
            ),
            Item(
                f"aes{size}",
                f"bare AESGCM encrypt+decrypt {_size(size)}",
                bench_bare_aesgcm(size),
                size,
            ),
        ]
    return {item.key: item for item in items}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.core", description=(__doc__ or "").strip().splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--rounds", type=int, help="rounds (default 7, quick 3)")
    parser.add_argument("--time", type=float, help="seconds per item per round (default 0.5)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    target = args.time or (0.02 if args.quick else 0.5)

    print(header(rounds, target, args.quick), flush=True)
    a, b = PrivateKey.generate(), PrivateKey.generate()
    items = build(a, b)
    t0 = perf_counter()
    measure(list(items.values()), rounds, target)
    print(f"elapsed:   {perf_counter() - t0:.1f} s\n")
    print(report(items))
    return 0


if __name__ == "__main__":
    sys.exit(main())
