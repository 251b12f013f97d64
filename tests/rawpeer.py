"""
Raw-socket BOTD #2 peers for the hostile tests (L{tests.test_hostile}).

Blocking sockets with timeouts, no reactor: every read is bounded by a
deadline.  The handshake is made with the sans-IO L{Initiator} and
L{Responder} of L{botd2.connection}; after it, frames are sealed and opened
here with two L{CipherState}s made from the session keys, so a test can send
anything (a flipped bit, a replayed frame, a bare length prefix) and see the
plaintext of everything the node sends back.

Closing is seen as EOF or a reset: WIRE.md section 2 counts both the same.
"""

from __future__ import annotations

import re
import select
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field

from botd2.botd2_pb2 import Envelope, Ping
from botd2.connection import HandshakeComplete, Initiator, Responder
from botd2.frames import MAX_MESSAGE, CipherState
from botd2.keys import PrivateKey, PublicKey

#: Bound on any single wait for the node, unless a test says otherwise.
WAIT = 10.0

#: What every id a node sends looks like: a UUID4, canonical, lowercase (WIRE.md section 3).
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

_LENGTH = struct.Struct(">I")


def frame(body: bytes) -> bytes:
    """A whole frame: the 4-byte big-endian length, then the body."""
    return _LENGTH.pack(len(body)) + body


def connect(
    host: str, port: int, timeout: float = WAIT, source: str | None = None
) -> socket.socket:
    """
    A TCP connection to the node, with Nagle off (each write goes at once),
    from the address C{source} if given (any 127.x.y.z on loopback).
    """
    sock = socket.create_connection(
        (host, port), timeout=timeout, source_address=(source, 0) if source else None
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """
    Send C{data}; C{False} if the node had already closed (a reset or a broken
    pipe is how a node that closed on our first bytes answers the rest).
    """
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


@dataclass
class Outcome:
    """
    How a read until the end went.

    @ivar data: every byte received.
    @ivar closed: the node closed (EOF or reset) before the deadline.
    @ivar elapsed: seconds from the start of the read to the close (or the
        deadline).
    """

    data: bytes
    closed: bool
    elapsed: float
    reset: bool = False


def read_until_closed(sock: socket.socket, timeout: float = WAIT) -> Outcome:
    """Read until EOF or a reset, for at most C{timeout} seconds."""
    start = time.monotonic()
    deadline = start + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return Outcome(b"".join(chunks), False, time.monotonic() - start)
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return Outcome(b"".join(chunks), False, time.monotonic() - start)
        except ConnectionResetError:
            return Outcome(b"".join(chunks), True, time.monotonic() - start, reset=True)
        if not chunk:
            return Outcome(b"".join(chunks), True, time.monotonic() - start)
        chunks.append(chunk)


def read_exactly(sock: socket.socket, n: int, timeout: float = WAIT) -> bytes:
    """
    Exactly C{n} bytes.

    @raise AssertionError: the node closed, or they did not come in time.
    """
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(buf)} of {n} bytes in {timeout:g} s")
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except TimeoutError:
            continue
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise AssertionError(f"the node closed after {len(buf)} of {n} bytes: {bytes(buf)!r}")
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket, timeout: float = WAIT) -> bytes:
    """One whole frame (length and body)."""
    deadline = time.monotonic() + timeout
    header = read_exactly(sock, 4, timeout)
    (length,) = _LENGTH.unpack(header)
    assert length <= 16 + MAX_MESSAGE, f"the node sent a frame length {length}"
    return header + read_exactly(sock, length, max(0.0, deadline - time.monotonic()))


def split_frames(data: bytes) -> tuple[list[bytes], bytes]:
    """The whole frames at the start of C{data}, and the bytes after them."""
    frames = []
    pos = 0
    while len(data) - pos >= 4:
        (length,) = _LENGTH.unpack_from(data, pos)
        if len(data) - pos - 4 < length:
            break
        frames.append(data[pos : pos + 4 + length])
        pos += 4 + length
    return frames, data[pos:]


def check_sent_envelope(body: bytes) -> Envelope:
    """
    Parse an Envelope the node sent and check what WIRE.md section 3 asks
    of a sender: canonical serialization (field order, no defaults, no
    unknown fields: the bytes are what protobuf writes for the parsed
    message), every id a fresh UUID4 in lowercase canonical form, and an
    Error message of at most 256 bytes.

    @raise AssertionError: on any of those.
    """
    envelope = Envelope.FromString(body)
    assert envelope.SerializeToString() == body, f"not canonical: {body.hex()}"
    kind = envelope.WhichOneof("body")
    if kind in ("init", "ack", "ping", "pong", "error"):
        message = getattr(envelope, kind)
        assert UUID4.fullmatch(message.id), f"{kind}.id {message.id!r} is not a UUID4"
    if kind == "error":
        assert len(envelope.error.message.encode("utf-8")) <= 256, envelope.error.message
    return envelope


@dataclass
class Transport:
    """
    Both directions of an open connection, seen from our side.

    @ivar send: our sending direction (its counter counts our frames).
    @ivar recv: the node's sending direction.
    @ivar ids: every id the node sent on this connection (they must differ).
    """

    send: CipherState
    recv: CipherState
    ids: list[str] = field(default_factory=list)

    def seal(self, plaintext: bytes) -> bytes:
        return self.send.seal_frame(plaintext)

    def open(self, whole: bytes) -> Envelope:
        """Open the node's next frame and check it as L{check_sent_envelope} does."""
        plaintext = self.recv.open(whole[:4], whole[4:])
        envelope = check_sent_envelope(plaintext)
        kind = envelope.WhichOneof("body")
        if kind is not None and kind != "payload":
            new = getattr(envelope, kind).id
            assert new not in self.ids, f"id {new} sent twice"
            self.ids.append(new)
        return envelope


class RawPeer:
    """
    An initiator on a raw socket: honest by default, and able to send
    whatever a test wants.

    @ivar static: our identity.
    @ivar conn: the sans-IO initiator that makes the Init and checks the Ack.
    @ivar init_frame: the Init we sent (for replays).
    @ivar ack_frame: the Ack the node sent.
    @ivar confirmation: the key-confirmation frame we sent (for replays).
    @ivar transport: the two directions, once the Ack is verified.
    """

    def __init__(
        self,
        host: str,
        port: int,
        node: PublicKey,
        static: PrivateKey | None = None,
        source: str | None = None,
    ) -> None:
        self.static = static or PrivateKey.generate()
        self.conn = Initiator(self.static, node)
        self.sock = connect(host, port, source=source)
        self.init_frame = b""
        self.ack_frame = b""
        self.confirmation = b""
        self.transport: Transport | None = None

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> bool:
        return send_quietly(self.sock, data)

    def send_init(self) -> bytes:
        """Send the Init (step 1); return the frame."""
        self.conn.initiate()
        self.init_frame = self.conn.data_to_send()
        self.sock.sendall(self.init_frame)
        return self.init_frame

    def read_ack(self, timeout: float = WAIT) -> bytes:
        """
        Read exactly the Ack frame and verify it (step 4; the sans-IO
        initiator also checks the signature, the init id and the key).
        Nothing is sent yet: the key confirmation waits in L{conn}.
        """
        ack = self.ack_frame = read_frame(self.sock, timeout)
        check_sent_envelope(ack[4:])
        events = self.conn.receive_data(ack)
        assert [type(e) for e in events] == [HandshakeComplete], events
        keys = self.conn.keys
        assert keys is not None
        send = CipherState(keys.k_ir)
        send.counter = 1  # the key confirmation, sealed by conn, is frame 0
        self.transport = Transport(send, CipherState(keys.k_ri))
        return ack

    def confirm(self) -> bytes:
        """Send the key confirmation (step 6); return the frame."""
        self.confirmation = self.conn.data_to_send()
        assert len(self.confirmation) == 20, self.confirmation
        self.sock.sendall(self.confirmation)
        return self.confirmation

    def handshake(self) -> RawPeer:
        """The whole honest handshake."""
        self.send_init()
        self.read_ack()
        self.confirm()
        return self

    @property
    def t(self) -> Transport:
        assert self.transport is not None, "the handshake is not done"
        return self.transport

    def seal(self, envelope: bytes | Envelope) -> bytes:
        """Seal the next frame (the counter moves even if it is never sent)."""
        if isinstance(envelope, Envelope):
            envelope = envelope.SerializeToString()
        return self.t.seal(envelope)

    def send(self, envelope: bytes | Envelope) -> bytes:
        """Seal and send the next frame; return it."""
        data = self.seal(envelope)
        self.sock.sendall(data)
        return data

    def receive(self, timeout: float = WAIT) -> Envelope:
        """The node's next transport frame, opened and checked."""
        return self.t.open(read_frame(self.sock, timeout))

    def ping(self, ping_id: str | None = None, timeout: float = WAIT) -> Envelope:
        """
        A Ping and its Pong (which must come next, answer this Ping and
        carry a fresh id).
        """
        ping_id = ping_id or str(uuid.uuid4())
        self.send(Envelope(ping=Ping(id=ping_id)))
        envelope = self.receive(timeout)
        assert envelope.WhichOneof("body") == "pong", envelope
        assert envelope.pong.ping_id == ping_id, envelope
        return envelope

    def until_closed(self, timeout: float = WAIT) -> tuple[list[Envelope], Outcome]:
        """See L{until_closed}."""
        return until_closed(self.sock, self.t, timeout)


class RawResponder:
    """
    The responder end of a connection the node dialled (C{--connect}):
    a sans-IO L{Responder} for the checks and the Ack, a raw socket for
    the rest.
    """

    def __init__(self, sock: socket.socket, static: PrivateKey, ack_id: str | None = None) -> None:
        self.sock = sock
        self.static = static
        self.conn = Responder(static, ack_id=ack_id)
        self.init_body = b""
        self.transport: Transport | None = None

    def read_init(self, timeout: float = WAIT) -> Envelope:
        """Read the node's Init, check it as a responder must; the Ack is queued."""
        init = read_frame(self.sock, timeout)
        self.init_body = init[4:]
        envelope = check_sent_envelope(self.init_body)
        assert self.conn.receive_data(init) == [], "the Init was refused"
        keys = self.conn.keys
        assert keys is not None
        self.transport = Transport(CipherState(keys.k_ri), CipherState(keys.k_ir))
        return envelope

    def take_ack(self) -> bytes:
        """The Ack the sans-IO responder made (not sent)."""
        return self.conn.data_to_send()

    @property
    def t(self) -> Transport:
        assert self.transport is not None
        return self.transport

    def until_closed(self, timeout: float = WAIT) -> tuple[list[Envelope], Outcome]:
        """See L{until_closed}."""
        return until_closed(self.sock, self.t, timeout)


def until_closed(
    sock: socket.socket, t: Transport, timeout: float = WAIT
) -> tuple[list[Envelope], Outcome]:
    """
    Read until the node closes (or C{timeout}); open every frame it sent.

    @raise AssertionError: a frame longer than 16 + 1,048,576 (WIRE.md
        section 2: a node never sends a larger plaintext), or bytes left
        after the last whole frame of a closed connection.
    """
    outcome = read_until_closed(sock, timeout)
    frames, rest = split_frames(outcome.data)
    for f in frames:
        assert len(f) <= 4 + 16 + MAX_MESSAGE, f"the node sent a frame of {len(f)} bytes"
    assert rest == b"" or not outcome.closed, f"a partial frame before the close: {rest[:40].hex()}"
    return [t.open(f) for f in frames], outcome


def accept(listener: socket.socket, timeout: float = WAIT) -> socket.socket:
    """The next connection on C{listener}, within C{timeout}."""
    ready, _, _ = select.select([listener], [], [], timeout)
    if not ready:
        raise AssertionError(f"no connection within {timeout:g} s")
    sock, _ = listener.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def listener() -> socket.socket:
    """A listening socket on 127.0.0.1, on a port the kernel picks."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock
