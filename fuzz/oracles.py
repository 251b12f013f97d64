"""
The oracles: run one input against one target and check every property.

A broken property raises L{Violation}, whose message says which and shows
the evidence; otherwise the check returns an outcome string for the
statistics (C{"rejected:bad_tag"}, C{"accepted:complete"}, ...).

Connections (targets C{responder}, C{initiator}, C{transport}), after each read:

  1. C{receive_data} does not raise; the events come in a legal order: at
     most one C{HandshakeComplete}; a C{ConnectionFailed} or
     C{ErrorReceived} is the last event, the connection is then closed, and
     every later read gives no event and queues nothing.
  2. A failure before the handshake is complete queues nothing in that read
     (so feeding everything at once, a rejected Init or Ack gets no Ack, no
     key confirmation: nothing at all); a bad tag queues nothing; any other
     failure once complete queues exactly one frame more, an Error sealed
     under the next send nonce, holding C{Envelope{error}} with our id and a
     message of at most 256 bytes (WIRE.md sections 2, 4 and 5).
  3. A responder's C{HandshakeComplete} names the key that signed the Init
     it received (a signature the pool made: nobody else's), and the
     initiator's names the responder it dialled; the initiator queues
     nothing for an invalid Ack (no key confirmation).
  4. The events and the output are exactly those of L{fuzz.model}, read by
     read: the same frames accepted and refused, the same handshake
     verdict (the code reported is one of the rules the input breaks), the
     same Ack and key confirmation bytes, the same transcript hash, the same
     payloads, ids and Error messages (as logged: the first 256 bytes,
     control characters escaped).  So splitting the stream any way gives
     the same events as one read.
  5. Transport cases: the events before the first damaged frame are those
     the unmutated stream gives.

C{buffer}: a L{ReceiveBuffer} fed the stream split and unsplit gives the
same frames (bodies, or plaintexts and the first bad tag for sealed
streams) as the model's framing, and holds exactly the unconsumed bytes.

C{twisted}: a L{BOTD2Protocol} over a C{StringTransport} on a C{Clock},
with an application that greets and echoes: C{dataReceived} never raises;
nothing is logged with a traceback; after each read it is open (neither it
nor the transport disconnecting) or closed cleanly (both); a close before
the handshake is complete writes nothing in that read; what the model says
ends the connection does end it; after C{connectionLost} no timer is left,
the node forgets the connection, and the application heard of the end iff
it heard of the peer.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence

from google.protobuf.wrappers_pb2 import StringValue
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from botd2 import errors
from botd2.connection import (
    Connection,
    ConnectionFailed,
    ErrorReceived,
    Event,
    HandshakeComplete,
    PayloadReceived,
    PingReceived,
    PongReceived,
)
from botd2.frames import BadTag, CipherState, ReceiveBuffer
from botd2.messages import printable_error_message
from botd2.protocol import PeerFactory, PeerProtocol
from fuzz import model
from fuzz.pool import (
    ERROR_ID,
    I_STATICS,
    R_STATIC,
    _allow,
    new_initiator,
    new_responder,
    pool,
)
from fuzz.strategies import BUFFER_KEY, BufferCase, Case, ConnCase, TwistedCase

#: Bugs found and not fixed yet: id -> what goes wrong.  None now: BUG-1
#: (the Twisted layer handled a read's events after a later frame of the same
#: read had closed the connection) is fixed, its reproducers are regression
#: tests in tests/test_fuzz.py.
KNOWN_BUGS: dict[str, str] = {}


def known_bug(violation: Violation) -> str | None:
    """The id of the known bug a violation shows, or C{None}."""
    if "BUG-1" not in KNOWN_BUGS or violation.target != "twisted":
        return None
    if (
        violation.summary in ("dataReceived raised", "logged a traceback")
        and "NotReady: cannot send in state closed" in violation.detail
    ):
        return "BUG-1"
    if violation.summary.startswith(
        ("closed for ProtocolViolation bad_payload", "closed for ProtocolViolation ping_flood")
    ) and _closed_later_in_a_read(violation.case):
        return "BUG-1"
    return None


def _closed_later_in_a_read(case: Case) -> bool:
    """Does a read of C{case} hold events and then, in that read, a close (the model's)?"""
    assert isinstance(case, TwistedCase)
    p = pool()
    conn = case.conn
    m = model.ModelConnection(
        p.responder_config if conn.role == "responder" else p.initiator_config
    )
    for data in conn.reads():
        events, _ = m.receive(data)
        if len(events) > 1 and events[-1][0] in ("failed", "error"):
            return True
    return False


class Violation(AssertionError):
    """
    A broken property.

    @ivar target: the target.
    @ivar case: the input.
    @ivar summary: one line that names the property (groups violations).
    """

    def __init__(self, target: str, case: Case, summary: str, detail: str = "") -> None:
        self.target = target
        self.case = case
        self.summary = summary
        self.detail = detail
        super().__init__(f"{target}: {summary}\n{detail}\nreproducer: {case.reproducer()}")


def _short(value: object, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def check(target: str, case: Case) -> str:
    """Run C{case} against C{target}; the outcome, or raise L{Violation}."""
    if target in ("responder", "initiator", "transport"):
        assert isinstance(case, ConnCase)
        return check_connection(target, case)
    if target == "buffer":
        assert isinstance(case, BufferCase)
        return check_buffer(case)
    if target == "twisted":
        assert isinstance(case, TwistedCase)
        return check_twisted(case)
    raise ValueError(f"unknown target {target!r}")


# Connections ------------------------------------------------------------------------


def as_model_event(event: Event) -> model.ModelEvent:
    """A botd2 event in the model's form (a failure keeps its one code)."""
    if isinstance(event, HandshakeComplete):
        return ("complete", bytes(event.peer), event.transcript_hash)
    if isinstance(event, PayloadReceived):
        return ("payload", event.type_url, bytes(event.value))
    if isinstance(event, PingReceived):
        return ("ping", event.ping_id)
    if isinstance(event, PongReceived):
        return ("pong", event.pong_id, event.ping_id)
    if isinstance(event, ErrorReceived):
        return ("error", event.message)
    if isinstance(event, ConnectionFailed):
        return ("failed", event.code)
    return ("unknown", repr(event))


def events_match(actual: model.ModelEvent, expected: model.ModelEvent) -> bool:
    if actual[0] != expected[0]:
        return False
    if actual[0] == "failed":
        codes = expected[1]
        assert isinstance(codes, frozenset)
        return actual[1] in codes
    if actual[0] == "error":
        message = expected[1]
        assert isinstance(message, str)
        logged = actual[1]
        assert isinstance(logged, str)
        # WIRE.md section 3: at most the first 256 bytes, control characters escaped.
        return logged.isprintable() and logged == printable_error_message(message)
    return actual == expected


class _Unsettled(Exception):
    """The model refused a signature botd2 accepted: check it the slow way, retry."""

    def __init__(self, triple: tuple[bytes, bytes, bytes]) -> None:
        self.triple = triple


def check_connection(target: str, case: ConnCase) -> str:
    """Properties 1 to 5 of the module docstring."""
    for _ in range(3):
        try:
            return _check_connection(target, case)
        except _Unsettled as u:
            if not pool().responder_config.known.settle(*u.triple):
                raise Violation(
                    target, case, "accepted a signature that does not verify", repr(u.triple)
                ) from None
    raise AssertionError("unreachable")


def _new_connection(target: str, case: ConnCase) -> tuple[Connection, model.ModelConnection]:
    p = pool()
    if case.role == "responder":
        return new_responder(), model.ModelConnection(p.responder_config)
    conn = new_initiator()
    init = conn.data_to_send()
    if init != p.to_responder[0].init:
        raise Violation(target, case, "the initiator's Init is not the pool's", init.hex())
    return conn, model.ModelConnection(p.initiator_config)


def _signature_in_dispute(m: model.ModelConnection, data: bytes) -> None:
    """If the model refused a handshake frame only for its signature, raise L{_Unsettled}."""
    c = m.config
    first = model.frames_of(data)[:1]
    if not first:
        return
    body = data[first[0][0] + 4 : first[0][1]]
    if c.role == "responder":
        broken, init = model.init_violations(body, c.static, c.blocked, c.known)
        if broken == {"bad_signature"} and init is not None:
            message = init.sender + init.recipient + init.ephemeral
            raise _Unsettled((init.sender, message, init.signature))
    else:
        broken, ack = model.ack_violations(body, c.init_id, c.static, c.responder, c.known)
        if broken == {"bad_signature"} and ack is not None:
            message = c.responder + c.static + ack.ephemeral
            raise _Unsettled((c.responder, message, ack.signature))


def _check_connection(target: str, case: ConnCase) -> str:
    conn, m = _new_connection(target, case)
    reads = case.reads()
    everything = b"".join(reads)
    history: list[Event] = []
    completed = False
    closed = False
    for n, data in enumerate(reads):
        where = f"read {n} of {len(reads)} ({len(data)} bytes)"
        try:
            events = conn.receive_data(data)
            out = conn.data_to_send()
        except Exception:
            raise Violation(
                target, case, "receive_data raised", f"{where}\n{traceback.format_exc()}"
            ) from None
        expected_events, expected_out = m.receive(data)

        # 1. Order, closing.
        if closed:
            if events or out:
                raise Violation(
                    target, case, "events or output after the close", f"{where}: {events!r}"
                )
            continue
        for k, event in enumerate(events):
            if isinstance(event, HandshakeComplete):
                if completed:
                    raise Violation(target, case, "a second HandshakeComplete", where)
                completed = True
                _check_peer(target, case, event, everything)
            if isinstance(event, ConnectionFailed | ErrorReceived) and k != len(events) - 1:
                raise Violation(
                    target, case, f"an event after {type(event).__name__}", repr(events)
                )
        last = events[-1] if events else None
        if isinstance(last, ConnectionFailed | ErrorReceived):
            closed = True
            if not conn.closed:
                raise Violation(target, case, f"not closed after {type(last).__name__}", where)
        if isinstance(last, ConnectionFailed) and out:
            # 2. What a failure may queue.
            if not completed:
                raise Violation(
                    target,
                    case,
                    f"queued output on a failure ({last.code}) before the handshake completed",
                    f"{where}: {out.hex()}",
                )
            if last.code == "bad_tag":
                raise Violation(target, case, "queued output after a bad tag", out.hex())
        if case.role == "initiator" and out and not completed:
            raise Violation(target, case, "the initiator queued output for an invalid Ack", where)

        # 4. The model.
        actual = [as_model_event(e) for e in events]
        if len(actual) != len(expected_events) or not all(
            map(events_match, actual, expected_events)
        ):
            _signature_in_dispute(m, b"".join(reads[: n + 1]))
            raise Violation(
                target,
                case,
                _mismatch_summary(actual, expected_events),
                f"{where}\nbotd2: {_short(actual, 1500)}\nmodel: {_short(expected_events, 1500)}",
            )
        _check_output(target, case, where, out, expected_out)
        history += events
    if conn.closed != m.closed:
        raise Violation(target, case, "closed state differs from the model's", repr(m.state))

    # 5. The prefix property.
    if case.original is not None:
        _check_prefix(target, case, history[len(_setup_events(case)) :])
    return _outcome(history)


def _setup_events(case: ConnCase) -> list[model.ModelEvent]:
    if not case.setup:
        return []
    config = pool().responder_config if case.role == "responder" else pool().initiator_config
    events, _ = model.ModelConnection(config).receive(case.setup)
    return events


def _check_prefix(target: str, case: ConnCase, after_setup: list[Event]) -> None:
    """Frames before the first damaged one give what the unmutated stream gives."""
    assert case.original is not None
    original, stream = case.original, case.stream
    damaged = common_prefix(original, stream)
    intact = [end for _, end in model.frames_of(original) if end <= damaged]
    if not intact:
        return
    p = pool()
    config = p.responder_config if case.role == "responder" else p.initiator_config
    m = model.ModelConnection(config)
    m.receive(case.setup)
    expected, _ = m.receive(original[: intact[-1]])
    actual = [as_model_event(e) for e in after_setup[: len(expected)]]
    if len(actual) != len(expected) or not all(map(events_match, actual, expected)):
        raise Violation(
            target,
            case,
            "events before the first damaged frame differ from the unmutated stream's",
            f"damaged at byte {damaged}\nbotd2: {_short(actual, 1500)}\n"
            f"unmutated: {_short(expected, 1500)}",
        )


def common_prefix(a: bytes, b: bytes) -> int:
    """The length of the longest common prefix (bisection on C-speed compares)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _mismatch_summary(actual: list[model.ModelEvent], expected: list[model.ModelEvent]) -> str:
    for a, e in zip(actual, expected, strict=False):
        if not events_match(a, e):
            return f"botd2 gave {_kind(a)} where the model gives {_kind(e)}"
    if len(actual) > len(expected):
        return f"botd2 gave an extra {_kind(actual[len(expected)])}"
    return f"botd2 gave no event where the model gives {_kind(expected[len(actual)])}"


def _kind(event: model.ModelEvent) -> str:
    if event[0] == "failed":
        codes = event[1]
        return "failed:" + ("|".join(sorted(codes)) if isinstance(codes, frozenset) else str(codes))
    return str(event[0])


def _check_peer(target: str, case: ConnCase, event: HandshakeComplete, data: bytes) -> None:
    """Property 3: who a completed handshake names."""
    p = pool()
    peer = bytes(event.peer)
    if case.role == "initiator":
        if peer != bytes(R_STATIC.public_key):
            raise Violation(target, case, "completed with another responder", peer.hex())
        return
    first = model.frames_of(data)[0]
    body = data[first[0] + 4 : first[1]]
    c = p.responder_config
    broken, init = model.init_violations(body, c.static, c.blocked, c.known)
    if broken or init is None or init.sender != peer:
        raise Violation(
            target,
            case,
            "the responder completed a handshake with a key that did not sign the Init",
            f"peer {peer.hex()}, Init rules broken: {sorted(broken)}",
        )


def _check_output(
    target: str, case: ConnCase, where: str, out: bytes, expected: Sequence[model.Output]
) -> None:
    """Property 2 and 4 for what was queued: the model's bytes, then at most one Error."""
    pos = 0
    for piece in expected:
        if isinstance(piece, bytes):
            if out[pos : pos + len(piece)] != piece:
                raise Violation(
                    target,
                    case,
                    "queued bytes differ from the model's",
                    f"{where}\nbotd2: {out[pos:].hex()[:600]}\nmodel: {piece.hex()[:600]}",
                )
            pos += len(piece)
            continue
        rest = out[pos:]
        problem = _error_frame_problem(piece, rest)
        if problem:
            raise Violation(target, case, problem, f"{where}\nqueued: {rest.hex()[:600]}")
        pos = len(out)
    if pos != len(out):
        raise Violation(
            target,
            case,
            "queued more than the model",
            f"{where}\nextra: {out[pos:].hex()[:600]}\nexpected: {_short(expected)}",
        )


def _error_frame_problem(spec: model.ErrorFrame, rest: bytes) -> str | None:
    """Why C{rest} is not exactly one Error frame sealed as C{spec} says, or C{None}."""
    if len(rest) < 4 + model.TAG:
        return "no Error frame queued on a protocol error after completion"
    if int.from_bytes(rest[:4], "big") != len(rest) - 4:
        return "not exactly one frame queued on a protocol error"
    plaintext = model.open_at(spec.key, spec.counter, rest)
    if plaintext is None:
        return "the Error frame is not sealed under the next send nonce"
    try:
        envelope = model.parse_envelope(plaintext)
    except model.WireError:
        return "the Error frame holds no valid Envelope"
    if envelope.kind != "error":
        return f"the Error frame holds {envelope.kind}"
    message = envelope.text("message")
    if envelope.text("id") != ERROR_ID or len(message.encode()) > 256 or not message:
        return "the Error has a wrong id or an empty or too long message"
    canonical = model.canonical("error", {"id": ERROR_ID, "message": message})
    if plaintext != canonical:
        return "the Error is not serialized canonically"
    return None


def _outcome(history: list[Event]) -> str:
    complete = any(isinstance(e, HandshakeComplete) for e in history)
    last = history[-1] if history else None
    if isinstance(last, ConnectionFailed):
        return f"rejected:{last.code}" + ("" if complete else ":before-complete")
    if isinstance(last, ErrorReceived):
        return "closed:error-received"
    return "accepted:complete" if complete else "accepted:incomplete"


# ReceiveBuffer ------------------------------------------------------------------------

_BAD = b"<bad tag>"


def _reference_frames(case: BufferCase) -> list[bytes]:
    out = []
    direction = model.Direction(BUFFER_KEY)
    for start, end in model.frames_of(case.stream):
        if not case.sealed:
            out.append(case.stream[start + 4 : end])
            continue
        plaintext = direction.open(case.stream[start : start + 4], case.stream[start + 4 : end])
        out.append(_BAD if plaintext is None else plaintext)
        if plaintext is None:
            break
    return out


def _run_buffer(case: BufferCase, reads: list[bytes]) -> list[bytes]:
    buf = ReceiveBuffer()
    cipher = CipherState(BUFFER_KEY)
    got: list[bytes] = []
    fed = consumed = 0
    for n, data in enumerate(reads):
        buf.feed(data)
        fed += len(data)
        while (length := buf.peek_length()) is not None and buf.has(length):
            consumed += 4 + length
            if not case.sealed:
                got.append(buf.take_body(length))
                continue
            try:
                got.append(buf.open_frame(cipher, length))
            except BadTag:
                got.append(_BAD)
                return got
        if n % 2 == 0:
            buf.compact()
        if len(buf) != fed - consumed:
            raise Violation(
                "buffer", case, "len(buffer) is not the unconsumed byte count", f"read {n}"
            )
        rest = case.stream[consumed:fed]
        expected = int.from_bytes(rest[:4], "big") if len(rest) >= 4 else None
        if buf.peek_length() != expected:
            raise Violation("buffer", case, "peek_length is not the next length field")
    return got


def check_buffer(case: BufferCase) -> str:
    """Split and unsplit give the reference framing."""
    reference = _reference_frames(case)
    try:
        whole = _run_buffer(case, [case.stream])
        parts = _run_buffer(case, case.reads())
    except Violation:
        raise
    except Exception:
        raise Violation("buffer", case, "ReceiveBuffer raised", traceback.format_exc()) from None
    if whole != reference:
        raise Violation("buffer", case, "unsplit stream: frames differ from the reference")
    if parts != reference:
        raise Violation("buffer", case, "split stream: frames differ from the unsplit stream")
    if reference and reference[-1] == _BAD:
        return "bad_tag"
    return f"frames:{min(len(reference), 5)}{'+' if len(reference) > 5 else ''}"


# Twisted --------------------------------------------------------------------------------


class FuzzApp(PeerProtocol):
    """An application as the README shows one: greets its peer, echoes text."""

    messageTypes = (StringValue,)

    def __init__(self) -> None:
        self.lost: list[Failure] = []
        self.heard = 0

    def peerAuthenticated(self) -> None:
        self.heard += 1
        self.sendMessage(StringValue(value="hello"))

    def messageReceived(self, message: object) -> None:
        assert isinstance(message, StringValue)
        self.sendMessage(StringValue(value="echo: " + message.value))

    def peerDisconnected(self, reason: Failure) -> None:
        self.lost.append(reason)


def _written_problem(
    written: bytes,
    responder: bool,
    m: model.ModelConnection,
    authenticated: bool,
    reason: object,
) -> str | None:
    """
    What is wrong with everything the protocol wrote, or C{None}: whole
    frames only; the handshake frame, then frames that decrypt under our send
    key and hold valid Envelopes; at most one Error, last, and only when the
    rules allow one: after completion, for a protocol error or a keep-alive
    timeout; never once a bad tag or the peer's Error was read (WIRE.md
    sections 2 and 5: even if an earlier frame of that read was a protocol
    error, the stream is then untrusted, or the peer gone).
    """
    bounds = model.frames_of(written)
    if (bounds[-1][1] if bounds else 0) != len(written):
        return "wrote a partial frame"
    if not responder:
        bounds = bounds[1:]  # the Init, checked when it was written
    elif bounds:
        bounds = bounds[1:]  # the Ack, checked by the sans-IO oracles
    if not bounds:
        return None
    if not authenticated:
        return "wrote transport frames for a connection that never completed"
    assert m.keys is not None
    direction = model.Direction(m.keys.k_ri if responder else m.keys.k_ir)
    kinds = []
    for start, end in bounds:
        plaintext = direction.open(written[start : start + 4], written[start + 4 : end])
        if plaintext is None:
            return "wrote a frame that does not decrypt under our send key"
        try:
            kinds.append(model.parse_envelope(plaintext).kind)
        except model.WireError:
            return "wrote a frame that holds no valid Envelope"
    errors_sent = kinds.count("error")
    if errors_sent > 1 or (errors_sent and kinds[-1] != "error"):
        return "wrote more than one Error, or frames after an Error"
    code = getattr(reason, "code", None)
    quiet = code == "bad_tag" or m.failure == frozenset({"bad_tag"}) or m.peer_error
    wants_error = isinstance(reason, errors.KeepAliveTimeout) or (
        isinstance(reason, errors.ProtocolViolation) and code not in ("bad_tag", None)
    )
    if wants_error and not quiet and not errors_sent:
        return f"closed for {type(reason).__name__} {code or ''} without sending an Error"
    if errors_sent and (quiet or isinstance(reason, errors.ClosedByPeer)):
        return f"sent an Error on {type(reason).__name__} {code or ''} (or after a bad tag)"
    return None


def _failures(events: Sequence[LogEvent]) -> list[LogEvent]:
    return [e for e in events if "log_failure" in e]


def check_twisted(case: TwistedCase) -> str:
    """The Twisted layer's properties (module docstring)."""
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        return _check_twisted(case, observer)
    finally:
        globalLogPublisher.removeObserver(observer)


def _check_twisted(case: TwistedCase, observer: EventLoggingObserver) -> str:
    conn_case = case.conn
    p = pool()
    clock = Clock()
    responder = conn_case.role == "responder"
    factory = PeerFactory(
        R_STATIC if responder else I_STATICS[0],
        protocol=FuzzApp,
        reactor=clock,
        clock=clock,
        allow=_allow if responder else None,
    )
    connection: Connection = new_responder() if responder else new_initiator(initiate=False)
    proto = factory.wrap(connection)
    transport = StringTransport()

    def violation(summary: str, detail: str = "") -> Violation:
        failures = "".join(
            f"\nlogged: {e.get('log_format')}\n{e['log_failure'].getTraceback()}"
            for e in _failures(observer)
        )
        return Violation("twisted", case, summary, detail + failures)

    try:
        proto.makeConnection(transport)
    except Exception:
        raise violation("makeConnection raised", traceback.format_exc()) from None
    if not responder and transport.value() != p.to_responder[0].init:
        raise violation("the initiator did not write its Init first")
    m = model.ModelConnection(p.responder_config if responder else p.initiator_config)
    reads = conn_case.reads()
    advances = case.advances + (0.0,) * (len(reads) - len(case.advances))
    for n, (data, advance) in enumerate(zip(reads, advances, strict=True)):
        where = f"read {n} of {len(reads)}, clock +{advance}"
        try:
            clock.advance(advance)
        except Exception:
            raise violation("a timer raised", f"{where}\n{traceback.format_exc()}") from None
        before = len(transport.value())
        closing = proto.disconnecting
        try:
            proto.dataReceived(data)
        except Exception:
            raise violation("dataReceived raised", f"{where}\n{traceback.format_exc()}") from None
        if not closing:
            m.receive(data)  # the model reads what the protocol reads
        written = transport.value()[before:]
        if proto.disconnecting != transport.disconnecting:
            raise violation(
                "neither open nor cleanly closed",
                f"{where}: protocol disconnecting={proto.disconnecting}, "
                f"transport disconnecting={transport.disconnecting}",
            )
        if closing and written:
            raise violation("wrote after deciding to close", where)
        if proto.disconnecting and not proto.authenticated and written:
            raise violation("wrote when closing before the handshake completed", where)
        if _failures(observer):
            raise violation("logged a traceback", where)
    if m.closed and not proto.disconnecting:
        raise violation("the connection stayed open after a protocol violation", repr(m.state))
    open_at_end = not proto.disconnecting
    authenticated = proto.authenticated
    reason = proto._reason
    problem = _written_problem(transport.value(), responder, m, authenticated, reason)
    if problem:
        raise violation(problem, f"reason {reason!r}\nwritten {transport.value().hex()[:3000]}")
    try:
        proto.connectionLost(Failure(ConnectionDone()))
    except Exception:
        raise violation("connectionLost raised", traceback.format_exc()) from None
    app = proto.app
    assert isinstance(app, FuzzApp)
    if len(app.lost) != (1 if authenticated else 0) or app.heard != (1 if authenticated else 0):
        raise violation(
            "the application heard of the end iff it heard of the peer: no",
            f"heard {app.heard}, lost {len(app.lost)}",
        )
    if factory.connections or factory.peers:
        raise violation("the node still holds the connection after connectionLost")
    if [c for c in clock.getDelayedCalls() if c.active()]:
        raise violation("a timer is left after connectionLost")
    if _failures(observer):
        raise violation("logged a traceback")
    if open_at_end:
        return "open:" + ("complete" if authenticated else "incomplete")
    code = getattr(reason, "code", None)
    return f"closed:{type(reason).__name__}" + (f":{code}" if code else "")
