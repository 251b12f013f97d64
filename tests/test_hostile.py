"""
Hostile peers against a real node: C{twistd -n botd2} in a subprocess,
driven over raw sockets (L{tests.rawpeer}) through every rule of WIRE.md
that can be seen from outside.

A node's answer to a broken rule is one of two, and each test says which:

  - before the handshake is complete: the connection is closed and NOTHING
    is sent (read until EOF or reset: zero bytes);
  - after it: an C{Error} (opened with our session keys), then the close,
    and nothing after the C{Error} -- except after a bad tag, when nothing
    at all is sent.

"At once" means well before any timer of the node could close the
connection instead (L{AT_ONCE}, against a handshake timeout of 10 s or more
and keep-alive settings of 60 s/30 s), so a node that ignored the rule and
let a timer end the connection fails.

One node runs per test class (started with the first test of the class,
killed after its last, and at exit in any case); the settings differ by
class.  After every test, the node must still be running, serve an honest
peer (a handshake and a Ping round trip over a raw socket), and have no
C{Traceback} in its log.

Runtime: about 50 s, 32 s of it in L{KeepAliveTests}, whose one test
waits for the node's first keep-alive Ping (the interval cannot be set
below 30 s) and the 2 s pong timeout after it.  Eight nodes are started in
all (0.4 s each).
"""

from __future__ import annotations

import atexit
import os
import select
import socket
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import coincurve
from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import BytesValue, StringValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from botd2.botd2_pb2 import Ack, Envelope, Error, Ping, Pong
from botd2.connection import Initiator
from botd2.frames import MAX_MESSAGE, TAG_SIZE, CipherState
from botd2.handshake import check_ack, derive_keys
from botd2.keyfile import key_to_pem
from botd2.keys import PrivateKey
from botd2.messages import encode_payload
from soak import _node as soak_node
from tests.rawpeer import (
    WAIT,
    Outcome,
    RawPeer,
    RawResponder,
    Transport,
    accept,
    check_sent_envelope,
    connect,
    frame,
    listener,
    read_frame,
    read_until_closed,
    send_quietly,
    split_frames,
)
from tests.vectors import botd2, h

#: A refusal "at once" comes within this many seconds (the node's timers
#: that could close the connection instead are 10 s or more away).
AT_ONCE = 5.0
#: Slack allowed after a timer of the node is due.
SLACK = 1.0

#: secp256k1's group order.
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

#: A payload type no node handles.
UNKNOWN_TYPE = "type.googleapis.com/botd2.hostile.NoSuchType"


# The node under test --------------------------------------------------------


@dataclass(eq=False)
class RunningNode(soak_node.NodeProcess):
    """A node of L{soak._node.startNode}, with when it started and raw peers to it."""

    startedAt: float = field(default_factory=time.monotonic)

    def peer(self, static: PrivateKey | None = None, source: str | None = None) -> RawPeer:
        """A raw connection to the node, nothing sent yet."""
        return RawPeer(self.host, self.port, self.key, static, source)

    def stop(self) -> None:
        super().stop()
        _running.discard(self)


_running: set[RunningNode] = set()


@atexit.register
def _killAll() -> None:
    for node in list(_running):
        node.stop()


def startNode(args: Sequence[str], key: PrivateKey | None = None) -> RunningNode:
    """
    Start C{twistd -n botd2} on 127.0.0.1, port 0, in a new directory under
    the current one (trial's C{_trial_temp}); wait (bounded) for its
    "listening on" line.  C{key}: written as its key file (mode 0600), else
    the node makes a fresh one.
    """
    directory = tempfile.mkdtemp(prefix="hostile-node-", dir=os.getcwd())
    if key is not None:
        fd = os.open(os.path.join(directory, "node.key"), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                     0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_to_pem(key))
    started = soak_node.startNode(args, directory=directory)
    node = RunningNode(started.process, directory, started.key, started.host, started.port,
                       started.files)
    _running.add(node)
    return node


class NodeTestCase(SynchronousTestCase):
    """
    One node for all the tests of a class (trial has no C{setUpClass}: the
    first C{setUp} starts it, the last C{tearDown} kills it, and an atexit
    hook kills it when only some of the tests were run).  After each test
    the node must be healthy (L{assertServes}).

    @cvar nodeArgs: options for C{twistd botd2}.
    @cvar honestKey: the key of the honest peer of L{assertServes}
        (C{None}: a fresh one each time).
    """

    nodeArgs: ClassVar[Sequence[str]] = ()
    honestKey: ClassVar[PrivateKey | None] = None
    node: RunningNode

    @classmethod
    def nodeKey(cls) -> PrivateKey | None:
        """The node's identity (C{None}: a fresh one)."""
        return None

    @classmethod
    def extraArgs(cls) -> list[str]:
        """More options, made when the node starts (listeners to dial, say)."""
        return []

    def setUp(self) -> None:
        cls = type(self)
        shared = cls.__dict__.get("_shared")
        if shared is None or shared.process.poll() is not None:
            shared = startNode([*cls.nodeArgs, *cls.extraArgs()], cls.nodeKey())
            cls._shared = shared  # type: ignore[attr-defined]
            cls._left = len([n for n in dir(cls) if n.startswith("test_")])  # type: ignore[attr-defined]
        self.node = shared

    def tearDown(self) -> None:
        cls = type(self)
        try:
            self.assertServes()
        finally:
            cls._left -= 1  # type: ignore[attr-defined]
            if cls._left <= 0:  # type: ignore[attr-defined]
                self.node.stop()
                cls._shared = None  # type: ignore[attr-defined]
                cls.classCleanup()

    @classmethod
    def classCleanup(cls) -> None:
        """Called once the node of the class is stopped."""

    # Helpers ----------------------------------------------------------------

    def peer(self, static: PrivateKey | None = None, source: str | None = None) -> RawPeer:
        """A raw connection, closed after the test; nothing sent yet."""
        p = self.node.peer(static, source)
        self.addCleanup(p.close)
        return p

    def honest(self, static: PrivateKey | None = None, source: str | None = None) -> RawPeer:
        """A raw connection with the honest handshake done."""
        return self.peer(static, source).handshake()

    def assertServes(self, node: RunningNode | None = None, traceback: bool = False) -> None:
        """
        The node runs, completes an honest handshake and answers a Ping, and
        its log has no traceback (unless C{traceback}).
        """
        node = node or self.node
        self.assertIsNone(node.process.poll(), f"the node exited:\n{node.log()}")
        p = node.peer(self.honestKey)
        try:
            p.handshake()
            p.ping()
        finally:
            p.close()
        if not traceback:
            self.assertNotIn("Traceback", node.log())

    def assertClosedSilently(self, outcome: Outcome, what: str, within: float = AT_ONCE) -> None:
        """The node closed within C{within} seconds and sent nothing at all."""
        self.assertTrue(outcome.closed, f"{what}: not closed within {outcome.elapsed:.2f} s "
                                        f"(got {outcome.data.hex() or 'nothing'})")
        self.assertEqual(outcome.data, b"", f"{what}: the node sent bytes before closing")
        self.assertLess(outcome.elapsed, within, what)

    def assertErrorThenClose(
        self, p: RawPeer | RawResponder, what: str, before: Sequence[str] = ()
    ) -> Error:
        """
        The node sends the frames of kinds C{before}, then an C{Error}, then
        closes at once, sending nothing after the Error; the Error is returned.
        """
        envelopes, outcome = p.until_closed(AT_ONCE)
        kinds = [e.WhichOneof("body") for e in envelopes]
        self.assertTrue(outcome.closed, f"{what}: not closed at once (got {kinds})")
        self.assertEqual(kinds, [*before, "error"], what)
        error = envelopes[-1].error
        self.assertTrue(error.message, f"{what}: an Error without a reason")
        return error

    def assertOpen(self, p: RawPeer, what: str) -> None:
        """
        The connection still works: the node answers a message (an echo
        with L{EchoPeer}, else the Pong to our first Ping) and sent nothing
        unasked.
        """
        if "botd2.echo.EchoPeer" in self.nodeArgs:
            marker = uuid.uuid4().hex
            p.send(encode_payload(StringValue(value=marker)))
            reply = p.receive(AT_ONCE)
            self.assertEqual(reply.WhichOneof("body"), "payload", what)
            value = StringValue.FromString(reply.payload.value).value
            self.assertEqual(value, f"echo: {marker}", what)
        else:
            p.ping(timeout=AT_ONCE)


def waitClosed(socks: dict[str, tuple[socket.socket, float]],
               timeout: float) -> dict[str, Outcome]:
    """
    Read several sockets at once until each is closed or C{timeout} passed;
    each L{Outcome}'s C{elapsed} counts from the start time given with it.
    """
    data: dict[str, bytearray] = {name: bytearray() for name in socks}
    done: dict[str, Outcome] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(socks):
        waiting = {s: name for name, (s, _) in socks.items() if name not in done}
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select(list(waiting), [], [], left)
        now = time.monotonic()
        for s in ready:
            name = waiting[s]
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                data[name] += chunk
            else:
                done[name] = Outcome(bytes(data[name]), True, now - socks[name][1])
    now = time.monotonic()
    for name, (_, start) in socks.items():
        done.setdefault(name, Outcome(bytes(data[name]), False, now - start))
    return done


# Before the handshake is complete -------------------------------------------


def _vectorKey(entry: dict[str, Any]) -> PrivateKey:
    key = PrivateKey(h(entry["private"]))
    assert bytes(key.public_key).hex() == entry["public"], entry["label"]
    return key


def invalidInit() -> Any:
    """C{invalid_init.json} (read when a test needs it: a missing file fails that test)."""
    return botd2("invalid_init.json")


class InitRefusalTests(NodeTestCase):
    """
    WIRE.md sections 1 to 4 on the responder, before completion: every frame
    that is not a valid Init is closed on at once, sending nothing.  The
    node runs with the key of C{invalid_init.json}'s responder, so the
    vectors apply byte for byte; the handshake timeout is 10 s, twice
    L{AT_ONCE}.
    """

    nodeArgs = ("--handshake-timeout", "10")

    @classmethod
    def nodeKey(cls) -> PrivateKey:
        return _vectorKey(invalidInit()["responder"]["static"])

    def refuse(self, name: str, data: bytes) -> Outcome:
        """Send C{data} on a new connection; the close that follows."""
        p = self.peer()
        send_quietly(p.sock, data)
        outcome = read_until_closed(p.sock, AT_ONCE + SLACK)
        p.close()
        return outcome

    def test_vectorKey(self) -> None:
        """The node is the vectors' responder (else every case below means nothing)."""
        self.assertEqual(self.node.key.node_id, invalidInit()["responder"]["static"]["node_id"])

    def test_invalidInitVectors(self) -> None:
        """
        Every case of C{invalid_init.json}: bad signatures (flipped, other
        key, high-S, r or s zero or >= n, 63/65 bytes, DER, missing, hashed
        twice, point at infinity), bad keys (uncompressed, prefix 04/05,
        X >= p, X not on the curve, missing), wrong recipient, the node's own
        key as sender, bad ids, bad lengths, other messages, unparsable
        bytes: closed at once, nothing sent.  For the C{prefix_only} cases
        only the 4 length bytes are sent: the close must come without a
        body (for 2^32 - 1 too: a node waiting for the body would hold on).
        After each case the node serves an honest peer.
        """
        cases = invalidInit()["cases"]
        self.assertGreaterEqual(len(cases), 50)
        self.assertGreaterEqual(sum(bool(c.get("prefix_only")) for c in cases), 3)
        failures = []
        for case in cases:
            data = h(case["prefix"] if case.get("prefix_only") else case["frame"])
            outcome = self.refuse(case["name"], data)
            try:
                self.assertClosedSilently(outcome, case["name"])
            except self.failureException as e:
                failures.append(str(e))
            self.assertServes()
        self.assertEqual(failures, [])

    def test_hugeLengthNotAllocated(self) -> None:
        """
        A handshake length of 2^32 - 1 is refused on the 4 bytes alone,
        without reserving room for the body: the node's peak virtual memory
        (C{VmPeak} in C{/proc}, which counts even untouched reservations)
        grows by less than 64 MiB.
        """
        status = f"/proc/{self.node.process.pid}/status"
        if not os.path.exists(status):
            raise SkipTest("no /proc/PID/status here")

        def peak() -> int:
            with open(status, encoding="ascii") as f:
                (line,) = [line for line in f if line.startswith("VmPeak:")]
            return int(line.split()[1]) * 1024

        before = peak()
        self.assertClosedSilently(self.refuse("2^32 - 1", b"\xff\xff\xff\xff"), "2^32 - 1")
        self.assertLess(peak() - before, 64 << 20)

    def test_handshakesBoundedPerAddress(self) -> None:
        """
        WIRE.md section 4, "Cost of strangers" (a SHOULD): from one address,
        40 connections that never send a byte.  The node holds some (at
        least 8) and refuses the others at once, sending nothing; meanwhile
        a peer from another address (127.0.0.2) is served.  Once the silent
        ones are gone, 127.0.0.1 is served again.
        """
        socks = {}
        for i in range(40):
            s = connect(self.node.host, self.node.port)
            self.addCleanup(s.close)
            socks[f"silent #{i}"] = (s, time.monotonic())
        outcomes = waitClosed(socks, 1.0)
        refused = [name for name, outcome in outcomes.items() if outcome.closed]
        self.assertTrue(refused, "no connection was refused")
        self.assertGreaterEqual(40 - len(refused), 8, "fewer than 8 were held")
        for name in refused:
            self.assertClosedSilently(outcomes[name], name)
        other = self.honest(source="127.0.0.2")
        other.ping()
        for s, _ in socks.values():
            s.close()
        deadline = time.monotonic() + WAIT
        while True:
            try:
                self.honest().ping()
                break
            except AssertionError:
                self.assertLess(time.monotonic(), deadline, "127.0.0.1 is never served again")
                time.sleep(0.1)

    def test_validVariantsComplete(self) -> None:
        """
        Every C{valid_variants} Init (1- and 64-byte ids, ids that are no
        UUID, a signature with a non-RFC 6979 nonce, reordered, repeated,
        split and unknown fields, a 1024-byte frame) gets an Ack for its id,
        and the handshake completes with the vectors' initiator ephemeral
        key: our key confirmation and a Ping, merged in one write, get a
        Pong.  That holds only if the node hashed the Init bytes exactly as
        received (WIRE.md section 4 step 5), whatever their encoding.  The
        node's Ack signatures are the deterministic (RFC 6979, low-S) ones.
        """
        responder = coincurve.PrivateKey(h(invalidInit()["responder"]["static"]["private"]))
        i_s = _vectorKey(invalidInit()["initiator"]["static"])
        i_e = _vectorKey(invalidInit()["initiator"]["ephemeral"])
        for variant in invalidInit()["valid_variants"]:
            name = variant["name"]
            whole = h(variant["frame"])
            p = self.peer()
            p.sock.sendall(whole)
            ack = read_frame(p.sock)
            check_sent_envelope(ack[4:])
            r_e = check_ack(ack[4:], variant["expected"]["id"], i_s.public_key, self.node.key)
            # WIRE.md section 1: the node signs with RFC 6979 nonces and low-S, as
            # libsecp256k1 does (here through coincurve, not botd2).
            signed = bytes(self.node.key) + bytes(i_s.public_key) + bytes(r_e)
            self.assertEqual(Envelope.FromString(ack[4:]).ack.signature,
                             responder.sign_recoverable(signed)[:64], name)
            keys = derive_keys(i_e, r_e, whole[4:], ack[4:])
            t = Transport(CipherState(keys.k_ir), CipherState(keys.k_ri))
            ping = Envelope(ping=Ping(id=f"variant {name}")).SerializeToString()
            p.sock.sendall(t.seal(b"") + t.seal(ping))
            pong = t.open(read_frame(p.sock))
            self.assertEqual(pong.WhichOneof("body"), "pong", name)
            self.assertEqual(pong.pong.ping_id, f"variant {name}", name)
            p.close()

    def test_garbage(self) -> None:
        """
        Bytes that are no BOTD #2: an HTTP request, a TLS ClientHello start,
        zeros, a plausible length with random bytes: closed at once, nothing
        sent.
        """
        cases = {
            "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "tls": bytes.fromhex("160301020001000200") + os.urandom(64),
            "zero_body": frame(bytes(64)),
            "random_body": frame(b"\xff" + os.urandom(99)),
            "tiny_frame": frame(b"\x00"),
        }
        for name, data in cases.items():
            self.assertClosedSilently(self.refuse(name, data), name)

    def test_transportFrameInsteadOfInit(self) -> None:
        """
        A transport frame where the Init belongs (an honest peer's key
        confirmation and Ping, replayed on a new connection): closed at once,
        nothing sent.
        """
        donor = self.honest()
        ping = donor.seal(Envelope(ping=Ping(id="x")))  # never sent on its own connection
        for name, data in (("key confirmation", donor.confirmation), ("ping", ping)):
            self.assertClosedSilently(self.refuse(name, data), name)

    def test_splitAndMerged(self) -> None:
        """
        WIRE.md section 2: frames split across reads in any way.  The Init
        in three writes (1 byte, 3 bytes, the rest), the key confirmation
        byte by byte, then a Ping and an unknown payload merged in one write
        with a split one: the Pong comes.
        """
        p = self.peer()
        p.conn.initiate()
        init = p.conn.data_to_send()
        for piece in (init[:1], init[1:4], init[4:]):
            p.sock.sendall(piece)
            time.sleep(0.02)
        p.read_ack()
        confirmation = p.conn.data_to_send()
        for i in range(len(confirmation)):
            p.sock.sendall(confirmation[i : i + 1])
        unknown = p.seal(Envelope(payload=any_pb2.Any(type_url=UNKNOWN_TYPE, value=b"hi")))
        ping = p.seal(Envelope(ping=Ping(id="merged")))
        p.sock.sendall(unknown + ping[:7])
        time.sleep(0.02)
        p.sock.sendall(ping[7:])
        pong = p.receive()
        self.assertEqual((pong.WhichOneof("body"), pong.pong.ping_id), ("pong", "merged"))


class HandshakeTimeoutTests(NodeTestCase):
    """
    WIRE.md section 4, "Handshake timeout": a connection whose handshake is
    not complete 2 s (C{--handshake-timeout 2}) after it was established is
    closed, nothing sent, whatever part of a frame arrived.  Timed from our
    C{connect()}, which returns before the node accepts: the close must come
    no earlier than the timeout and within L{SLACK} after it.
    """

    TIMEOUT = 2.0
    nodeArgs = ("--handshake-timeout", "2")

    def assertClosedAtTimeout(self, outcome: Outcome, what: str) -> None:
        """Closed, nothing sent, at the timeout (from C{outcome}'s start)."""
        self.assertTrue(outcome.closed, f"{what}: not closed after {outcome.elapsed:.2f} s")
        self.assertEqual(outcome.data, b"", f"{what}: the node sent bytes before closing")
        self.assertGreaterEqual(outcome.elapsed, self.TIMEOUT - 0.05, what)
        self.assertLessEqual(outcome.elapsed, self.TIMEOUT + SLACK, what)

    def test_silentAndPartialFrames(self) -> None:
        """
        Four connections at once: silent; half a length prefix; a length
        prefix alone; a length and half an Init body.  Each is closed at the
        timeout, nothing sent.
        """
        initiator = Initiator(PrivateKey.generate(), self.node.key)
        initiator.initiate()
        whole = initiator.data_to_send()
        sends = {"silent": b"", "half a prefix": whole[:2], "a prefix": whole[:4],
                 "half a body": whole[: 4 + (len(whole) - 4) // 2]}
        socks = {}
        for name, data in sends.items():
            s = connect(self.node.host, self.node.port)
            self.addCleanup(s.close)
            start = time.monotonic()
            if data:
                s.sendall(data)
            socks[name] = (s, start)
        outcomes = waitClosed(socks, self.TIMEOUT + SLACK + 1)
        for name, outcome in outcomes.items():
            self.assertClosedAtTimeout(outcome, name)

    def test_missingKeyConfirmation(self) -> None:
        """
        A valid Init, the Ack read, then silence (no key confirmation), or
        half the key confirmation: the node closes at the timeout and sends
        nothing after the Ack.
        """
        socks = {}
        for name in ("no key confirmation", "half a key confirmation"):
            p = self.peer()
            start = time.monotonic()
            p.send_init()
            p.read_ack()
            if name.startswith("half"):
                p.sock.sendall(p.conn.data_to_send()[:10])
            socks[name] = (p.sock, start)
        for name, outcome in waitClosed(socks, self.TIMEOUT + SLACK + 1).items():
            self.assertClosedAtTimeout(outcome, name)

    def test_replayedInit(self) -> None:
        """
        An honest peer's Init replayed on new connections: the node cannot
        tell and answers with an Ack (a fresh one: another id and another
        ephemeral key), but the replay never completes.

          - Replayed alone: closed at the timeout, nothing sent after the Ack.
          - Followed, once the Ack is read, by the honest peer's key
            confirmation (the only transport frame an attacker has): closed
            at once, nothing sent after the Ack (the tag fails: the keys
            differ).
          - Init and key confirmation in one write (one read on loopback):
            closed at once, nothing sent, not even the Ack -- a node that
            closes before completion sends nothing (WIRE.md section 4).

        The honest connection stays up: it was not replaced (WIRE.md
        section 7) and answers a Ping.
        """
        honest = self.honest()
        nodeLog = self.node.log
        deadline = time.monotonic() + WAIT
        while f"handshake with {honest.static.public_key.node_id}" not in nodeLog():
            self.assertLess(time.monotonic(), deadline, "the honest handshake never completed")
            time.sleep(0.02)
        acks = [check_sent_envelope(honest.ack_frame[4:]).ack]
        socks = {}
        for name in ("alone", "then a key confirmation", "in one write"):
            s = connect(self.node.host, self.node.port)
            self.addCleanup(s.close)
            start = time.monotonic()
            if name == "in one write":
                s.sendall(honest.init_frame + honest.confirmation)
            else:
                s.sendall(honest.init_frame)
                acks.append(check_sent_envelope(read_frame(s)[4:]).ack)
            if name == "then a key confirmation":
                s.sendall(honest.confirmation)
                start = time.monotonic()  # from here, the close is due at once
            socks[name] = (s, start)
        outcomes = waitClosed(socks, self.TIMEOUT + SLACK + 1)
        self.assertClosedAtTimeout(outcomes["alone"], "replayed Init")
        # At once: well before the handshake timeout would close them anyway.
        for name in ("then a key confirmation", "in one write"):
            self.assertClosedSilently(outcomes[name], f"replayed Init, {name}",
                                      within=self.TIMEOUT / 2)
        initID = Envelope.FromString(honest.init_frame[4:]).init.id
        for ack in acks:
            self.assertEqual(ack.init_id, initID)
        self.assertEqual(len({a.id for a in acks}), 3, "Ack ids are fresh")
        self.assertEqual(len({a.ephemeral_pubkey for a in acks}), 3, "ephemeral keys are fresh")
        self.assertOpen(honest, "the honest connection after the replays")


# After the handshake -----------------------------------------------------------


def flip(data: bytes, index: int) -> bytes:
    """C{data} with the low bit of byte C{index} flipped."""
    out = bytearray(data)
    out[index] ^= 1
    return bytes(out)


def sizedPayload(size: int) -> bytes:
    """A serialized C{Envelope{payload}} of an unknown type, exactly C{size} bytes."""
    value = size - 100
    while True:
        body = Envelope(payload=any_pb2.Any(type_url=UNKNOWN_TYPE, value=bytes(value)))
        data = body.SerializeToString()
        if len(data) == size:
            return data
        value += size - len(data)


class TransportTests(NodeTestCase):
    """
    WIRE.md sections 2, 3, 5, 6 and 7 on complete connections, against a
    node running the example application L{botd2.echo.EchoPeer}, whose
    echoes show that a connection still works (and that frames were
    counted) without the 30 s limit on Pings.  Default timers: a 10 s
    handshake timeout, Pings every 60 s.
    """

    nodeArgs = ("--protocol", "botd2.echo.EchoPeer")

    def test_badTag(self) -> None:
        """
        WIRE.md section 2: a transport frame whose tag fails -- a bit flipped
        in the ciphertext, in the tag, or a frame sealed under a skipped
        counter -- is closed on at once, nothing sent (no Error).
        """
        for name in ("ciphertext", "tag", "skipped counter"):
            p = self.honest()
            self.assertOpen(p, name)
            data = p.seal(encode_payload(StringValue(value="flipped")))
            if name == "ciphertext":
                data = flip(data, 4)
            elif name == "tag":
                data = flip(data, len(data) - 1)
            else:
                data = p.seal(encode_payload(StringValue(value="after a skipped one")))
            p.sock.sendall(data)
            self.assertClosedSilently(read_until_closed(p.sock, AT_ONCE + SLACK), name)

    def test_replayedFrame(self) -> None:
        """
        A transport frame sent twice: echoed once, then closed on at once,
        nothing sent (the counter moved: the tag fails).  The same for our
        key confirmation sent again.
        """
        p = self.honest()
        data = p.seal(encode_payload(StringValue(value="once")))
        p.sock.sendall(data)
        self.assertEqual(StringValue.FromString(p.receive().payload.value).value, "echo: once")
        p.sock.sendall(data)
        self.assertClosedSilently(read_until_closed(p.sock, AT_ONCE + SLACK), "replayed frame")
        q = self.honest()
        q.sock.sendall(q.confirmation)
        self.assertClosedSilently(read_until_closed(q.sock, AT_ONCE + SLACK),
                                  "replayed key confirmation")

    def test_lengthOutOfRange(self) -> None:
        """
        WIRE.md section 2: a transport length below 16 or above 16 +
        1,048,576: an Error, then the close, though we send only the 4
        length bytes (a node that waited for the body would hold on).
        """
        for length in (0, 1, TAG_SIZE - 1, TAG_SIZE + MAX_MESSAGE + 1, 0xFFFFFFFF):
            p = self.honest()
            p.sock.sendall(length.to_bytes(4, "big"))
            self.assertErrorThenClose(p, f"length {length}")

    def test_maxMessageAccepted(self) -> None:
        """
        WIRE.md section 2: a node MUST accept a plaintext of 1,048,576 bytes
        (a frame of 16 + 1,048,576): it is taken (an unknown payload,
        ignored) and the connection still works.
        """
        p = self.honest()
        data = p.seal(sizedPayload(MAX_MESSAGE))
        self.assertEqual(len(data), 4 + TAG_SIZE + MAX_MESSAGE)
        p.sock.sendall(data)
        self.assertOpen(p, "after the largest message")

    def test_handshakeMessagesAfterHandshake(self) -> None:
        """
        WIRE.md section 5: an Envelope holding C{init} (our own Init again)
        or C{ack} (the node's own Ack) in the transport phase: an Error, then
        the close.
        """
        for name in ("init", "ack"):
            p = self.honest()
            p.send(p.init_frame[4:] if name == "init" else p.ack_frame[4:])
            self.assertErrorThenClose(p, name)

    def test_unparsablePlaintext(self) -> None:
        """
        WIRE.md section 3: a plaintext that is no Envelope (0xff bytes, field
        number 0, a truncated field, a Ping id that is not UTF-8) is a
        protocol error: an Error, then the close.
        """
        for name, plaintext in (
            ("0xff bytes", b"\xff" * 16),
            ("field number 0", b"\x00\x00"),
            ("truncated field", b"\x1a\x05\x0a\x03ab"),
            ("invalid UTF-8", b"\x1a\x04\x0a\x02\xc3\x28"),
        ):
            p = self.honest()
            p.send(plaintext)
            self.assertErrorThenClose(p, name)

    def test_badIds(self) -> None:
        """
        WIRE.md section 3: an empty id, or one over 64 bytes of UTF-8, is a
        protocol error -- in a Ping or in a Pong (even one that answers
        nothing): an Error, then the close.
        """
        for name, envelope in (
            ("ping, empty id", b"\x1a\x00"),
            ("ping, 65-byte id", Envelope(ping=Ping(id="a" * 65))),
            ("ping, 33 characters in 66 bytes", Envelope(ping=Ping(id="\u00e9" * 33))),
            ("pong, empty id", Envelope(pong=Pong(ping_id="nothing"))),
            ("pong, 65-byte id", Envelope(pong=Pong(id="b" * 65, ping_id="nothing"))),
        ):
            p = self.honest()
            p.send(envelope)
            self.assertErrorThenClose(p, name)

    def test_idsAccepted(self) -> None:
        """
        WIRE.md section 3: any id of 1..64 bytes of UTF-8 is accepted,
        whatever its form, and the Pong names it byte for byte.
        """
        for pingID in ("x", "a" * 64, "\u00e9" * 32, "\U0001f600" * 16, " NOT-a-uuid\t"):
            p = self.honest()
            self.assertEqual(p.ping(pingID).pong.ping_id, pingID)

    def test_pingFlood(self) -> None:
        """
        WIRE.md section 6: a second Ping less than 30 s after the first is a
        ping flood: the first gets its Pong, the second an Error, then the
        close.  Both sent apart, and both in one write.
        """
        p = self.honest()
        p.ping()
        p.send(Envelope(ping=Ping(id=str(uuid.uuid4()))))
        self.assertErrorThenClose(p, "flood")
        q = self.honest()
        one, two = Envelope(ping=Ping(id="one")), Envelope(ping=Ping(id="two"))
        q.sock.sendall(q.seal(one) + q.seal(two))
        self.assertErrorThenClose(q, "flood in one write", before=["pong"])

    def test_unknownPongIgnored(self) -> None:
        """
        WIRE.md section 6: a Pong that answers no Ping is ignored: nothing
        comes back, the connection stays, and a Ping after it is answered.
        """
        p = self.honest()
        p.send(Envelope(pong=Pong(id=str(uuid.uuid4()), ping_id=str(uuid.uuid4()))))
        self.assertOpen(p, "after an unknown Pong")
        p.ping()

    def test_ignoredEnvelopes(self) -> None:
        """
        WIRE.md sections 3 and 5: an Envelope with no body, one holding only
        an unknown field (a newer message type), and payloads of types the
        application does not handle are ignored -- and counted: the echo
        after them decrypts only if the node moved its counter for each.
        """
        p = self.honest()
        p.send(b"")
        p.send(b"\x7a\x00")  # field 15, length 0
        p.send(Envelope(payload=any_pb2.Any(type_url=UNKNOWN_TYPE, value=b"\x01\x02")))
        p.send(encode_payload(BytesValue(value=b"not handled")))
        self.assertOpen(p, "after ignored Envelopes")

    def test_errorFromPeer(self) -> None:
        """
        WIRE.md section 3: on our Error the node closes, sending nothing;
        it logs at most the first 256 bytes of the reason, control characters
        escaped (ours has an escape sequence and a line break, and runs past
        256 bytes, which breaks the sender's rule).  An Error with an empty
        id is not checked: it closes the connection just the same.
        """
        marker = uuid.uuid4().hex
        message = f"bye {marker}\x1b[31m\r\nforged line " + "y" * 300
        p = self.honest()
        p.send(Envelope(error=Error(id=str(uuid.uuid4()), message=message)))
        self.assertClosedSilently(read_until_closed(p.sock, AT_ONCE + SLACK), "our Error")
        deadline = time.monotonic() + WAIT
        while marker not in self.node.log():
            self.assertLess(time.monotonic(), deadline, "the node did not log our Error")
            time.sleep(0.02)
        log = self.node.log()
        self.assertNotIn("\x1b", log)
        self.assertNotIn("\nforged line", log)
        self.assertIn(f"bye {marker}\\x1b[31m\\r\\nforged line y", log)
        # The first 256 bytes of the message hold 201 of the 300 "y"s.
        head = len(f"bye {marker}\x1b[31m\r\nforged line ".encode())
        for line in log.splitlines():
            if marker in line:
                shown = line[line.index("forged line ") + len("forged line ") :]
                self.assertEqual(shown.strip("y"), "", line)
                self.assertLessEqual(len(shown), 256 - head, line)
        q = self.honest()
        q.send(Envelope(error=Error(message="no id")))
        self.assertClosedSilently(read_until_closed(q.sock, AT_ONCE + SLACK), "Error without id")

    def test_rekeyBothWays(self) -> None:
        """
        WIRE.md section 5: 1,005 messages each way.  Ours are frames 1 to
        1,005 under our key (the key confirmation was frame 0), the node's
        echoes frames 0 to 1,004 under its key, so each direction passes
        frame 1,000, the first under the next key; every echo comes back,
        in order, and decrypts under our rekeyed state.
        """
        p = self.honest()
        count = 1005
        p.sock.sendall(b"".join(p.seal(encode_payload(StringValue(value=str(i))))
                                for i in range(count)))
        for i in range(count):
            reply = p.receive()
            self.assertEqual(StringValue.FromString(reply.payload.value).value, f"echo: {i}")
        self.assertEqual((p.t.send.generation, p.t.recv.generation), (1, 1))

    def test_secondConnectionReplacesFirst(self) -> None:
        """
        WIRE.md section 7: a second complete connection from the same key
        (both dialled by us) replaces the first, which gets an Error under
        its own keys, then the close; the second stays.
        """
        key = PrivateKey.generate()
        first = self.honest(key)
        self.assertOpen(first, "the first connection")
        second = self.honest(key)
        self.assertOpen(second, "the second connection")
        self.assertErrorThenClose(first, "the replaced connection")
        self.assertOpen(second, "the second connection, after the first closed")


    def largestEcho(self) -> tuple[RunningNode, list[Envelope], Outcome]:
        """
        On a node of its own: a text message
        whose Envelope is exactly 1,048,576 bytes, which the node must
        accept, and whose echo would be 6 bytes too large to send.  What the
        node sends until it closes (or for L{AT_ONCE}).
        """
        node = startNode(self.nodeArgs)
        self.addCleanup(node.stop)
        p = node.peer()
        self.addCleanup(p.close)
        p.handshake()
        size = MAX_MESSAGE - 100
        while len(data := encode_payload(StringValue(value="x" * size))) != MAX_MESSAGE:
            size += MAX_MESSAGE - len(data)
        p.send(data)
        envelopes, outcome = p.until_closed(AT_ONCE)
        return node, envelopes, outcome

    def test_largestEchoNotSent(self) -> None:
        """
        WIRE.md section 2: a node MUST NOT send a plaintext over 1,048,576
        bytes.  The echo of the largest message would be one: it is not
        sent (every frame is checked against 16 + 1,048,576), and the node
        still serves.
        """
        node, envelopes, _ = self.largestEcho()
        # (every frame received was checked against 16 + 1,048,576 already)
        payloads = [e.payload for e in envelopes if e.WhichOneof("body") == "payload"]
        echoes = [StringValue.FromString(p.value).value for p in payloads]
        self.assertEqual(echoes, ["echo: (too large to echo)"])
        self.assertServes(node, traceback=True)

    def test_largestEchoNoTraceback(self) -> None:
        """
        A peer that sends the largest message a node must accept breaks no
        rule: the example application must not fail on it (its echo, 6 bytes
        longer, would be over the maximum; it once raised MessageTooLarge,
        logged a traceback and closed the connection).
        """
        node, _, _ = self.largestEcho()
        self.assertNotIn("Traceback", node.log())


class KeepAliveTests(NodeTestCase):
    """
    WIRE.md section 6 against C{--ping-interval 30 --pong-timeout 2}: one
    test, about 32 s.
    """

    nodeArgs = ("--ping-interval", "30", "--pong-timeout", "2")

    def test_unansweredPing(self) -> None:
        """
        Two peers complete a handshake.  The silent one never answers: the
        node's first Ping comes one interval (30 s) after the handshake, no
        second Ping follows while it is outstanding, and 2 s later comes an
        Error (SHOULD) and the close.  The other answers the node's Ping with
        a Pong, and sends a Ping right after its handshake and another 30.5 s
        after the Pong to it: that one is no flood, it gets a Pong; this
        connection stays up.
        """
        silent = self.honest()
        silentAt = time.monotonic()
        answering = self.honest()
        answering.ping()
        firstPongAt = time.monotonic()
        peers = {"silent": silent, "answering": answering}
        buffers = {name: bytearray() for name in peers}
        got: dict[str, list[tuple[float, Envelope]]] = {name: [] for name in peers}
        closedAt: dict[str, float] = {}
        secondPing: str | None = None

        def kinds(name: str) -> list[str | None]:
            return [e.WhichOneof("body") for _, e in got[name]]

        def finished() -> bool:
            return ("silent" in closedAt and secondPing is not None
                    and any(e.pong.ping_id == secondPing for _, e in got["answering"])
                    and "ping" in kinds("answering"))

        deadline = silentAt + 30 + 2 + 3 * SLACK
        while not finished() and time.monotonic() < deadline:
            if secondPing is None and time.monotonic() >= firstPongAt + 30.5:
                secondPing = str(uuid.uuid4())
                answering.send(Envelope(ping=Ping(id=secondPing)))
            socks = {p.sock: name for name, p in peers.items() if name not in closedAt}
            ready, _, _ = select.select(list(socks), [], [], 0.1)
            now = time.monotonic()
            for s in ready:
                name = socks[s]
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    closedAt[name] = now
                    continue
                buffers[name] += chunk
                frames, rest = split_frames(bytes(buffers[name]))
                buffers[name] = bytearray(rest)
                for f in frames:
                    envelope = peers[name].t.open(f)
                    got[name].append((now, envelope))
                    if name == "answering" and envelope.WhichOneof("body") == "ping":
                        # Any id of 1..64 bytes will do (WIRE.md section 3).
                        answering.send(Envelope(pong=Pong(id="\U0001f600" * 16,
                                                          ping_id=envelope.ping.id)))
        self.assertEqual(kinds("silent"), ["ping", "error"])
        (pingAt, _), (errorAt, _) = got["silent"]
        self.assertGreaterEqual(pingAt - silentAt, 30 - 0.1)
        self.assertLessEqual(pingAt - silentAt, 30 + SLACK)
        self.assertGreaterEqual(errorAt - pingAt, 2 - 0.1)
        self.assertLessEqual(errorAt - pingAt, 2 + SLACK)
        self.assertIn("silent", closedAt)
        self.assertLessEqual(closedAt["silent"] - errorAt, SLACK)
        self.assertNotIn("answering", closedAt)
        self.assertNotIn("error", kinds("answering"))
        self.assertEqual(sorted(map(str, kinds("answering"))), ["ping", "pong"])
        self.assertTrue(finished(), f"answering: {kinds('answering')}")


# The node as initiator ------------------------------------------------------


#: Invalid Acks sent to the node dialling us: each must end the connection
#: at once with nothing sent (no key confirmation).
BAD_ACKS = (
    "wrong_init_id",
    "init_id_uppercase",
    "ack_id_empty",
    "ack_id_65_bytes",
    "signature_by_other_key",
    "signature_high_s",
    "signature_r_zero",
    "signature_63_bytes",
    "ephemeral_uncompressed",
    "ephemeral_x_ge_p",
    "ephemeral_not_on_curve",
    "init_instead_of_ack",
    "not_protobuf",
    "length_1025",
)


def publicKeyVector(note: str) -> bytes:
    """The encoding of the C{primitives.json} public key with this note."""
    (key,) = [k for k in botd2("primitives.json")["public_keys"] if k["note"] == note]
    return h(key["encoding"])


class InitiatorTests(NodeTestCase):
    """
    The node as initiator: it dials (C{--connect}) one listener of ours per
    case, each with its own key, all at start (its own key is made here, so
    that keys below and above it can be chosen).  Its handshake timeout is
    20 s, so the dials made at start are still waiting when the tests
    handle them (checked).  The node also restricts who may dial it
    (C{--allow}): the honest peer of L{assertServes} uses the allowed key.
    """

    allowed = PrivateKey.generate()
    honestKey = allowed
    nodeArgs = ("--handshake-timeout", "20", "--allow", allowed.public_key.node_id)
    listeners: ClassVar[dict[str, tuple[socket.socket, PrivateKey]]] = {}

    identity = PrivateKey.generate()

    @classmethod
    def nodeKey(cls) -> PrivateKey:
        return cls.identity

    @classmethod
    def extraArgs(cls) -> list[str]:
        args = []
        for name in ("merged", "crossed lower", "crossed higher", *BAD_ACKS):
            sock, key = listener(), PrivateKey.generate()
            if name.startswith("crossed"):
                # A key below (above) the node's, bytewise on the 33 bytes.
                while (bytes(key.public_key) < bytes(cls.identity.public_key)) != (
                    name == "crossed lower"
                ):
                    key = PrivateKey.generate()
                # test_crossedConnections dials the node from this key too.
                args += ["--allow", key.public_key.node_id]
            cls.listeners[name] = (sock, key)
            args += ["--connect", f"{key.public_key.node_id}@127.0.0.1:{sock.getsockname()[1]}"]
        return args

    @classmethod
    def classCleanup(cls) -> None:
        for sock, _ in cls.listeners.values():
            sock.close()
        cls.listeners = {}

    def dialled(self, name: str, ackID: str | None = None) -> RawResponder:
        """
        The node's connection to listener C{name}, its Init read and checked
        (signed by the node's key, to our key, a UUID4 id); the Ack is queued.
        """
        sock, key = self.listeners[name]
        conn = accept(sock)
        self.addCleanup(conn.close)
        r = RawResponder(conn, key, ackID)
        init = r.read_init().init
        self.assertEqual(init.sender_pubkey, bytes(self.node.key))
        self.assertEqual(init.recipient_pubkey, bytes(key.public_key))
        self.assertLess(time.monotonic() - self.node.startedAt, 15,
                        "too late: the node's 20 s handshake timeout may have run out")
        return r

    def badAck(self, name: str, r: RawResponder) -> bytes:
        """The frame of the invalid Ack C{name}, for the Init C{r} read."""
        ack = Envelope.FromString(r.take_ack()[4:]).ack
        init = Envelope.FromString(r.init_body).init
        signed = bytes(r.static.public_key) + bytes(self.node.key)
        sig_r, sig_s = ack.signature[:32], int.from_bytes(ack.signature[32:], "big")

        def withEphemeral(key: bytes) -> Ack:
            return Ack(id=str(uuid.uuid4()), init_id=init.id, ephemeral_pubkey=key,
                       signature=r.static.sign(signed + key))

        if name == "wrong_init_id":
            ack.init_id = str(uuid.uuid4())
        elif name == "init_id_uppercase":
            self.assertNotEqual(init.id.upper(), init.id)
            ack.init_id = init.id.upper()
        elif name == "ack_id_empty":
            ack.id = ""
        elif name == "ack_id_65_bytes":
            ack.id = "c" * 65
        elif name == "signature_by_other_key":
            ack.signature = PrivateKey.generate().sign(signed + ack.ephemeral_pubkey)
        elif name == "signature_high_s":
            ack.signature = sig_r + (N - sig_s).to_bytes(32, "big")
        elif name == "signature_r_zero":
            ack.signature = bytes(32) + ack.signature[32:]
        elif name == "signature_63_bytes":
            ack.signature = ack.signature[:63]
        elif name == "ephemeral_uncompressed":
            ack = withEphemeral(publicKeyVector("65-byte uncompressed"))
        elif name == "ephemeral_x_ge_p":
            ack = withEphemeral(publicKeyVector("X = p + 1 >= p"))
        elif name == "ephemeral_not_on_curve":
            ack = withEphemeral(publicKeyVector("X^3 + 7 not a square"))
        elif name == "init_instead_of_ack":
            return frame(r.init_body)
        elif name == "not_protobuf":
            return frame(b"\xff" * 16)
        elif name == "length_1025":
            return (1025).to_bytes(4, "big")
        else:
            raise AssertionError(name)
        return frame(Envelope(ack=ack).SerializeToString())

    def test_ackAndTransportFramesInOneRead(self) -> None:
        """
        WIRE.md sections 2, 3 and 4: the node sends nothing after its Init
        until it has the Ack; the Ack (its id 64 bytes of UTF-8 and no
        UUID), an unknown payload and a Ping in one write (a handshake frame
        and the first transport frames in one read) get the key confirmation
        (20 bytes: the tag alone) and a Pong.  Then our Error: the node
        closes, sending nothing further.
        """
        r = self.dialled("merged", ackID="\u00e9" * 32)
        ready, _, _ = select.select([r.sock], [], [], 0.3)
        self.assertEqual(ready, [], "the node sent something before the Ack")
        ack = r.take_ack()
        unknown = r.t.seal(Envelope(payload=any_pb2.Any(type_url=UNKNOWN_TYPE)).SerializeToString())
        ping = r.t.seal(Envelope(ping=Ping(id="merged")).SerializeToString())
        r.sock.sendall(ack + unknown + ping)
        confirmation = read_frame(r.sock)
        self.assertEqual(len(confirmation), 20)
        self.assertEqual(r.t.open(confirmation).ListFields(), [])
        pong = r.t.open(read_frame(r.sock))
        self.assertEqual((pong.WhichOneof("body"), pong.pong.ping_id), ("pong", "merged"))
        bye = Envelope(error=Error(id=str(uuid.uuid4()), message="bye")).SerializeToString()
        r.sock.sendall(r.t.seal(bye))
        self.assertClosedSilently(read_until_closed(r.sock, AT_ONCE + SLACK), "our Error")

    def test_crossedConnections(self) -> None:
        """
        WIRE.md section 7: the node dialled us and completed; we dial it
        from the same key and complete too.  Of the two, the one dialled by
        the lower node ID stays; the other gets an Error under its own keys,
        then the close.  Once with a key below the node's, once above.
        """
        for name in ("crossed lower", "crossed higher"):
            r = self.dialled(name)
            r.sock.sendall(r.take_ack())
            self.assertEqual(r.t.open(read_frame(r.sock)).ListFields(), [])  # key confirmation
            ours = self.honest(self.listeners[name][1])
            if name == "crossed lower":
                self.assertErrorThenClose(r, "the node's dial (our ID is lower)")
                ours.ping()
            else:
                self.assertErrorThenClose(ours, "our dial (the node's ID is lower)")
                r.sock.sendall(r.t.seal(Envelope(ping=Ping(id="kept")).SerializeToString()))
                pong = r.t.open(read_frame(r.sock))
                self.assertEqual((pong.WhichOneof("body"), pong.pong.ping_id), ("pong", "kept"))

    def test_invalidAcks(self) -> None:
        """
        WIRE.md sections 1 and 4 step 4: an Ack with another init id (also
        one differing only in case), a bad id, a signature by another key,
        high-S, r = 0 or 63 bytes long, an ephemeral key uncompressed, with
        X >= p or off the curve, an Init instead, bytes that are no Envelope,
        a length of 1025 (sent alone): the node closes at once, sending
        nothing -- no key confirmation.
        """
        failures = []
        for name in BAD_ACKS:
            r = self.dialled(name)
            send_quietly(r.sock, self.badAck(name, r))
            outcome = read_until_closed(r.sock, AT_ONCE + SLACK)
            try:
                self.assertClosedSilently(outcome, name)
            except self.failureException as e:
                failures.append(str(e))
        self.assertEqual(failures, [])

    def test_allowList(self) -> None:
        """
        WIRE.md section 4 step 2: a valid Init from a key the node does not
        allow is closed on at once, nothing sent; the allowed key gets in.
        """
        stranger = self.peer()
        stranger.send_init()
        self.assertClosedSilently(read_until_closed(stranger.sock, AT_ONCE + SLACK), "stranger")
        self.honest(self.allowed).ping()

    def test_silentResponder(self) -> None:
        """
        WIRE.md section 4, "Handshake timeout", on the initiator: a node
        started with C{--handshake-timeout 2} dials us; we read its Init and
        answer nothing: it closes about 2 s after connecting, sending
        nothing after the Init.  (Timed from our accept, which may come a
        little after the node's connect.)
        """
        sock = listener()
        self.addCleanup(sock.close)
        key = PrivateKey.generate()
        node = startNode(["--handshake-timeout", "2", "--connect",
                          f"{key.public_key.node_id}@127.0.0.1:{sock.getsockname()[1]}"])
        self.addCleanup(node.stop)
        conn = accept(sock)
        self.addCleanup(conn.close)
        start = time.monotonic()
        RawResponder(conn, key).read_init()
        outcome = read_until_closed(conn, 2 + SLACK + 1)
        elapsed = time.monotonic() - start
        self.assertTrue(outcome.closed)
        self.assertEqual(outcome.data, b"")
        self.assertGreaterEqual(elapsed, 2 - 0.5)
        self.assertLessEqual(elapsed, 2 + SLACK)
        self.assertServes(node)
