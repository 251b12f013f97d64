# -*- test-case-name: tests.test_connection -*-
"""
A BOTD #2 connection as a sans-IO state machine: bytes in, events out, bytes
to send back.  No sockets, no clock, no reactor.

Feed what the peer sent to L{Connection.receive_data}; it returns the
L{Event}s that data completes, in order.  Whatever the connection must send
(the Init, the Ack, the key confirmation, a Pong the application asked for,
an Error before a close) piles up until L{Connection.data_to_send} takes it.

The states, by role (WIRE.md section 4)::

    Initiator:  START --initiate()--> AWAIT_ACK --valid Ack--> OPEN
    Responder:  AWAIT_INIT --valid Init--> AWAIT_CONFIRMATION
                --first transport frame decrypts--> OPEN
    Either:     any failure, a received Error, or close() --> CLOSED

The handshake is complete on entering C{OPEN}; that is when
L{HandshakeComplete} is emitted, and never earlier.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from google.protobuf import any_pb2
from google.protobuf.message import Message

from botd2.botd2_pb2 import Envelope, Error, Ping, Pong
from botd2.frames import (
    _LENGTH,
    _NONCE,
    HANDSHAKE_MAX_LENGTH,
    LENGTH_SIZE,
    MAX_MESSAGE,
    REKEY_AFTER,
    TAG_SIZE,
    BadTag,
    CipherState,
    ReceiveBuffer,
    encode_length,
)
from botd2.handshake import (
    AllowPolicy,
    HandshakeError,
    TransportKeys,
    check_ack,
    check_init,
    derive_keys,
    make_ack,
    make_init,
)
from botd2.keys import PrivateKey, PublicKey
from botd2.messages import (
    _SPLITS,
    COPY_BELOW,
    DecodeError,
    encode_payload,
    is_valid_id,
    new_id,
    parse_envelope,
    printable_error_message,
    split_payload,
    truncate_error_message,
)


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class State(enum.Enum):
    START = "start"
    AWAIT_ACK = "await-ack"
    AWAIT_INIT = "await-init"
    AWAIT_CONFIRMATION = "await-confirmation"
    OPEN = "open"
    CLOSED = "closed"


class NotReady(Exception):
    """A send that the connection's state does not allow (yet, or any more)."""


class MessageTooLarge(ValueError):
    """An Envelope larger than C{max_message}: a node must not send it."""


# Events ------------------------------------------------------------------


class Event:
    """Something the peer's bytes made happen."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class HandshakeComplete(Event):
    """The handshake is complete (WIRE.md section 4, "Complete")."""

    peer: PublicKey
    transcript_hash: bytes


@dataclass(frozen=True, slots=True)
class PingReceived(Event):
    """A Ping with a valid id; the flood check and the Pong are the caller's."""

    ping_id: str


@dataclass(frozen=True, slots=True)
class PongReceived(Event):
    pong_id: str
    ping_id: str


@dataclass(slots=True)
class PayloadReceived(Event):
    """
    An application message, still packed.

    @ivar type_url: the C{Any}'s type URL.
    @ivar value: the C{Any}'s value, the serialized message (bytes-like: a
        view into the decrypted frame, not a copy).
    """

    type_url: str
    value: bytes | memoryview

    @property
    def payload(self) -> any_pb2.Any:
        """The payload as a C{google.protobuf.Any}."""
        return any_pb2.Any(type_url=self.type_url, value=bytes(self.value))


@dataclass(frozen=True, slots=True)
class ErrorReceived(Event):
    """
    The peer sent an Error and the connection is now closed.

    @ivar message: at most its first 256 bytes, control characters escaped.
    """

    message: str


@dataclass(frozen=True, slots=True)
class ConnectionFailed(Event):
    """
    The peer broke a rule; the connection is now closed.  If the rule allows
    an Error (transport phase, not a bad tag), it is in L{data_to_send}.

    @ivar code: a short stable name of the rule.
    @ivar reason: one sentence for a log.
    """

    code: str
    reason: str


_EMPTY_ENVELOPE: Final = b""
_LENGTH_UNPACK: Final = _LENGTH.unpack_from
_NONCE_PACK: Final = _NONCE.pack
_LENGTH_PACK: Final = _LENGTH.pack
#: Frames smaller than this are queued as one chunk, header and body joined.
_JOIN_BELOW: Final = 4096


class Connection:
    """
    One connection, one role.  Use L{Initiator} or L{Responder}.

    @ivar role: which side dialled.
    @ivar static: our identity key.
    @ivar peer: the peer's static key: known from the start for an
        initiator, from a valid Init for a responder.
    @ivar state: a L{State}.
    @ivar keys: the transport key schedule, once derived (kept for tests and
        logs; holds no ephemeral secret).
    @ivar max_message: the largest plaintext Envelope we accept.
    @ivar _new_id: makes the ids of the messages we send (UUID4 text; tests
        inject fixed ones to replay vectors).
    @ivar _ephemeral: our ephemeral private key, dropped once the transport
        keys exist.
    """

    role: Role

    def __init__(
        self,
        static: PrivateKey,
        *,
        ephemeral: PrivateKey | None = None,
        max_message: int = MAX_MESSAGE,
        ids: Callable[[], str] = new_id,
    ) -> None:
        if max_message < MAX_MESSAGE:
            raise ValueError("max_message must be at least 1,048,576 (WIRE.md section 2)")
        self.static = static
        self.peer: PublicKey | None = None
        self.keys: TransportKeys | None = None
        self.max_message = max_message
        self._new_id = ids
        # Made when first needed (a stranger who never sends an Init costs no
        # key generation), unless a test injects one.
        self._ephemeral: PrivateKey | None = ephemeral
        self._handshake_body: bytes | None = None
        self._send: CipherState | None = None
        self._recv: CipherState | None = None
        self._buffer = ReceiveBuffer()
        self._out: list[bytes] = []
        self._out_size = 0
        self.state = State.START

    # Inspection ------------------------------------------------------------

    @property
    def handshake_complete(self) -> bool:
        return self.state is State.OPEN

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed: the start of a frame."""
        return len(self._buffer)

    @property
    def frames_sent(self) -> int:
        """Transport frames sealed so far (0 before the handshake)."""
        send = self._send
        return 0 if send is None else send.generation * REKEY_AFTER + send.counter

    @property
    def can_send(self) -> bool:
        """May a transport frame be sent now?"""
        return self.state is State.OPEN or (
            self.state is State.AWAIT_CONFIRMATION and self.role is Role.RESPONDER
        )

    # Output -----------------------------------------------------------------

    @property
    def pending_size(self) -> int:
        """How many bytes are queued for the peer."""
        return self._out_size

    def data_to_send(self) -> bytes:
        """Everything queued for the peer, in order; the queue is emptied."""
        return b"".join(self.take_output())

    def take_output(self) -> list[bytes]:
        """
        Everything queued for the peer, as the chunks it was queued in (for
        C{writeSequence}, which saves joining them once more); the queue is
        emptied.
        """
        out = self._out
        self._out = []
        self._out_size = 0
        return out

    def _queue(self, header: bytes, body: bytes) -> None:
        self._out.append(header)
        self._out.append(body)
        self._out_size += len(header) + len(body)

    def send_envelope_bytes(self, envelope: bytes) -> None:
        """
        Queue a serialized Envelope as one transport frame.

        @raise MessageTooLarge: larger than 1,048,576 bytes.
        @raise NotReady: the handshake does not allow it yet, or closed.
        """
        if len(envelope) > MAX_MESSAGE:
            raise MessageTooLarge(
                f"an Envelope of {len(envelope)} bytes is larger than {MAX_MESSAGE}"
            )
        if self.state is not State.OPEN and not self.can_send:
            raise NotReady(f"cannot send in state {self.state.value}")
        send = self._send
        assert send is not None
        c = send.counter
        aead = send._aead
        if c < REKEY_AFTER and aead is not None:  # CipherState.seal, inline
            send.counter = c + 1
            header = _LENGTH_PACK(len(envelope) + TAG_SIZE)
            body = aead.encrypt(_NONCE_PACK(c), envelope, header)
        else:
            header, body = send.seal(envelope)
        if len(body) < _JOIN_BELOW:
            # one chunk: cheaper for writeSequence than two tiny ones
            self._out.append(header + body)
        else:
            self._out.append(header)
            self._out.append(body)
        self._out_size += 4 + len(body)

    def send_envelope(self, envelope: Envelope) -> None:
        self.send_envelope_bytes(envelope.SerializeToString())

    def send_payload(self, message: Message | any_pb2.Any) -> None:
        """Queue an application message (packed in C{Any} unless it is one)."""
        if isinstance(message, any_pb2.Any):
            self.send_envelope(Envelope(payload=message))
        else:
            self.send_envelope_bytes(encode_payload(message))

    def send_ping(self, ping_id: str | None = None) -> str:
        """Queue a Ping; return its id. Keep-alive timing is the caller's."""
        ping_id = ping_id or self._new_id()
        self.send_envelope(Envelope(ping=Ping(id=ping_id)))
        return ping_id

    def send_pong(self, ping_id: str, pong_id: str | None = None) -> None:
        self.send_envelope(Envelope(pong=Pong(id=pong_id or self._new_id(), ping_id=ping_id)))

    def send_error(self, message: str) -> None:
        """
        Queue an Error, if the handshake is complete, and close.  Before
        completion a node closes sending nothing (WIRE.md section 4).
        """
        if self.state is State.OPEN:
            error = Error(id=self._new_id(), message=truncate_error_message(message))
            self.send_envelope(Envelope(error=error))
        self.close()

    def forget_keys(self) -> None:
        """
        Drop L{keys} (ss, th, okm): the cipher states hold what is needed,
        and rekeying then leaves no copy of an earlier key behind.
        """
        self.keys = None

    def release_idle_ciphers(self, force: bool = False) -> None:
        """
        Drop each direction's AESGCM object if no frame used it since the
        last call (or at once, with C{force}): called every few seconds, an
        idle connection then costs 64 bytes of keys instead of ~5 KiB of
        cipher contexts.
        """
        for cipher in (self._send, self._recv):
            if cipher is not None:
                if force:
                    cipher.release()
                else:
                    cipher.release_if_idle()

    def close(self) -> None:
        """Stop: nothing more is received or sent, secrets are dropped."""
        self.state = State.CLOSED
        self._ephemeral = None
        self._handshake_body = None
        self.keys = None
        self._buffer.clear()

    # Input ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """
        Take bytes from the peer, in any split; return the events they
        complete.  After a L{ConnectionFailed} or L{ErrorReceived} event the
        connection is closed and later data is ignored.
        """
        if self.state is State.CLOSED:
            return []
        if self.state is State.START:
            raise NotReady("initiate() first")
        events: list[Event] = []
        self._buffer.feed(data)
        try:
            if self.state is not State.OPEN:
                self._receive_handshake(events)
            if self.state is State.OPEN:
                self._receive_transport(events)
        except _Fail as f:
            if self.state is State.OPEN and f.send_error:
                self.send_error(f.reason)
            else:
                # Until complete a close sends nothing, not even a queued Ack;
                # after a bad tag nothing more either, not even a queued key
                # confirmation (WIRE.md sections 2 and 4).
                self.take_output()
            self.close()
            events.append(ConnectionFailed(f.code, f.reason))
            return events
        self._buffer.compact()
        return events

    def _receive_handshake(self, events: list[Event]) -> None:
        """Frames until the handshake is complete (or the data ends)."""
        buf = self._buffer
        while (length := buf.peek_length()) is not None:
            if self._recv is None:
                if not 0 < length <= HANDSHAKE_MAX_LENGTH:
                    raise _Fail("bad_length", f"handshake frame length {length}", False)
                if not buf.has(length):
                    return
                self._handshake_frame(buf.take_body(length), events)
            else:
                if not TAG_SIZE <= length <= TAG_SIZE + self.max_message:
                    raise _Fail("bad_length", f"transport frame length {length}", True)
                if not buf.has(length):
                    return
                try:
                    plaintext = buf.open_frame(self._recv, length)
                except BadTag:
                    raise _Fail(
                        "bad_tag", "transport frame failed authentication", False
                    ) from None
                self._transport_frame(plaintext, events)
            if self.state is State.OPEN or self.closed:
                return

    def _receive_transport(self, events: list[Event]) -> None:
        """
        The hot loop: every frame of an open connection.  The same rules as
        L{_receive_handshake} for transport frames, with the common cases
        inlined: the open of L{CipherState.open} (its rekey and release
        cases stay there), and a canonical payload of a length seen before
        (L{split_payload}'s cache); the body is decrypted in place.
        """
        buf = self._buffer
        data, pos = buf._buf, buf._pos
        end = len(data)
        if end - pos < LENGTH_SIZE:
            return
        recv = self._recv
        assert recv is not None
        limit = TAG_SIZE + self.max_message
        unpack = _LENGTH_UNPACK
        pack = _LENGTH_PACK  # the AAD: the 4 length bytes, as bytes (cheaper than a view)
        nonce = _NONCE_PACK
        splits = _SPLITS
        append = events.append
        view = memoryview(data)
        try:
            while end - pos >= LENGTH_SIZE:
                (length,) = unpack(data, pos)
                if length < TAG_SIZE or length > limit:
                    raise _Fail("bad_length", f"transport frame length {length}", True)
                start = pos + LENGTH_SIZE
                stop = start + length
                if stop > end:
                    break
                c = recv.counter
                aead = recv._aead
                try:
                    if c < REKEY_AFTER and aead is not None:  # CipherState.open, inline
                        recv.counter = c + 1
                        plaintext = aead.decrypt(nonce(c), view[start:stop], pack(length))
                    else:
                        plaintext = recv.open(view[pos:start], view[start:stop])
                except (InvalidTag, BadTag):
                    raise _Fail(
                        "bad_tag", "transport frame failed authentication", False
                    ) from None
                pos = stop
                n = len(plaintext)
                hit = splits.get(n)
                if hit is not None and plaintext.startswith(hit[0]):
                    # split_payload's cache hit, inline: same header, same parse
                    head = len(hit[0])
                    if n - head < COPY_BELOW:
                        value: bytes | memoryview = plaintext[head:]
                    else:
                        value = memoryview(plaintext)[head:]
                    append(PayloadReceived(hit[1], value))
                    continue
                if n and plaintext[0] == 0x32:
                    payload = split_payload(plaintext)
                    if payload is not None:
                        append(PayloadReceived(payload[0], payload[1]))
                        continue
                self._transport_frame(plaintext, events)
                if self.state is not State.OPEN:
                    break
        finally:
            view.release()
            buf._pos = pos

    def _handshake_frame(self, body: bytes, events: list[Event]) -> None:
        raise NotImplementedError

    def _start_transport(
        self, peer_ephemeral: PublicKey, init_body: bytes, ack_body: bytes
    ) -> None:
        assert self._ephemeral is not None
        keys = derive_keys(self._ephemeral, peer_ephemeral, init_body, ack_body)
        # WIRE.md section 4: the ephemeral secret goes as soon as the keys exist.
        self._ephemeral = None
        self._handshake_body = None
        self.keys = keys
        if self.role is Role.INITIATOR:
            self._send, self._recv = CipherState(keys.k_ir), CipherState(keys.k_ri)
        else:
            self._send, self._recv = CipherState(keys.k_ri), CipherState(keys.k_ir)

    def _transport_frame(self, plaintext: bytes, events: list[Event]) -> None:
        if self.state is State.AWAIT_CONFIRMATION:
            # The first frame that decrypts completes the responder's handshake,
            # whatever it holds.
            self.state = State.OPEN
            assert self.peer is not None and self.keys is not None
            events.append(HandshakeComplete(self.peer, self.keys.th))
        if plaintext == _EMPTY_ENVELOPE:
            return
        if plaintext[0] == 0x32:
            payload = split_payload(plaintext)
            if payload is not None:
                events.append(PayloadReceived(*payload))
                return
        try:
            envelope = parse_envelope(plaintext)
        except DecodeError:
            raise _Fail("parse_error", "transport frame holds no valid Envelope", True) from None
        kind = envelope.WhichOneof("body")
        if kind == "payload":
            events.append(PayloadReceived(envelope.payload.type_url, envelope.payload.value))
        elif kind == "ping":
            if not is_valid_id(envelope.ping.id):
                raise _Fail("bad_id", "Ping id is empty or longer than 64 bytes", True)
            events.append(PingReceived(envelope.ping.id))
        elif kind == "pong":
            pong = envelope.pong
            if not is_valid_id(pong.id):
                raise _Fail("bad_id", "Pong id is empty or longer than 64 bytes", True)
            events.append(PongReceived(pong.id, pong.ping_id))
        elif kind == "error":
            # Close, sending nothing further.  What earlier frames of this
            # read queued (a key confirmation, an Ack) stays: it would be
            # on the wire already had those frames come in a read of their own.
            self.close()
            events.append(ErrorReceived(printable_error_message(envelope.error.message)))
        elif kind is not None:
            # init or ack in the transport phase
            raise _Fail("unexpected_message", f"{kind} after the handshake", True)
        # No body: key confirmation, or a message type from a newer version.


class _Fail(Exception):
    def __init__(self, code: str, reason: str, send_error: bool) -> None:
        self.code = code
        self.reason = reason
        self.send_error = send_error


class Initiator(Connection):
    """
    The side that dialled: it knows whom it wants (C{responder}).

    Call L{initiate} once, then send L{data_to_send} (the Init).
    """

    role = Role.INITIATOR

    def __init__(
        self,
        static: PrivateKey,
        responder: PublicKey,
        *,
        ephemeral: PrivateKey | None = None,
        init_id: str | None = None,
        max_message: int = MAX_MESSAGE,
        ids: Callable[[], str] = new_id,
    ) -> None:
        super().__init__(static, ephemeral=ephemeral, max_message=max_message, ids=ids)
        self.peer = responder
        self.init_id = init_id or self._new_id()

    def initiate(self) -> None:
        """Queue the Init (step 1)."""
        if self.state is not State.START:
            raise NotReady("initiate() is called once, first")
        assert self.peer is not None
        if self._ephemeral is None:
            self._ephemeral = PrivateKey.generate()
        body = make_init(self.static, self.peer, self._ephemeral.public_key, self.init_id)
        self._handshake_body = body
        self._queue(encode_length(len(body)), body)
        self.state = State.AWAIT_ACK

    def _handshake_frame(self, body: bytes, events: list[Event]) -> None:
        assert self.peer is not None and self._handshake_body is not None
        try:
            peer_ephemeral = check_ack(body, self.init_id, self.static.public_key, self.peer)
        except HandshakeError as e:
            raise _Fail(e.code, e.reason, False) from None
        self._start_transport(peer_ephemeral, self._handshake_body, body)
        self.state = State.OPEN
        assert self.keys is not None
        events.append(HandshakeComplete(self.peer, self.keys.th))
        # Step 6: key confirmation, an Envelope with no body.
        self.send_envelope_bytes(_EMPTY_ENVELOPE)


class Responder(Connection):
    """
    The side that accepted the TCP connection.

    @ivar allow: an optional policy: which static keys may connect.
    """

    role = Role.RESPONDER

    def __init__(
        self,
        static: PrivateKey,
        *,
        allow: AllowPolicy | None = None,
        ephemeral: PrivateKey | None = None,
        ack_id: str | None = None,
        max_message: int = MAX_MESSAGE,
        ids: Callable[[], str] = new_id,
    ) -> None:
        super().__init__(static, ephemeral=ephemeral, max_message=max_message, ids=ids)
        self.allow = allow
        self.ack_id = ack_id
        self.state = State.AWAIT_INIT

    def _handshake_frame(self, body: bytes, events: list[Event]) -> None:
        try:
            init = check_init(body, self.static.public_key, self.allow)
        except HandshakeError as e:
            raise _Fail(e.code, e.reason, False) from None
        if self._ephemeral is None:
            self._ephemeral = PrivateKey.generate()
        if self.ack_id is None:
            self.ack_id = self._new_id()
        self.peer = init.sender
        ack = make_ack(
            self.static, init.sender, self._ephemeral.public_key, init.id, self.ack_id
        )
        self._queue(encode_length(len(ack)), ack)
        self._start_transport(init.ephemeral, body, ack)
        self.state = State.AWAIT_CONFIRMATION
