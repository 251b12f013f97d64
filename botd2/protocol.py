# -*- test-case-name: tests.test_protocol -*-
"""
BOTD #2 on Twisted: the sans-IO L{botd2.connection} glued to a transport.

Three pieces, as in C{twisted.protocols.tls}:

  - L{BOTD2Protocol} sits on the TCP connection.  It runs the handshake,
    seals and opens frames, keeps the connection alive, and enforces the
    rules of WIRE.md.  It is also the I{transport} of the application's
    protocol: it wraps the TCP transport in the encrypted framing layer.
  - L{PeerProtocol} is what an application subclasses.  Its
    C{makeConnection} is called only once the handshake is complete (WIRE.md
    section 4), so C{peerAuthenticated} never sees an unproven peer; then
    C{messageReceived} gets each application message already unpacked, and
    C{peerDisconnected} says why the connection ended.
  - L{PeerFactory} is the node: the identity key, the settings, the
    admission caps, the one-connection-per-peer table (WIRE.md section 7),
    and L{PeerFactory.connect} to dial out.

Every timer runs on C{PeerFactory.clock}, any C{IReactorTime}, so a test
drives a day of keep-alive with C{task.Clock} in milliseconds.

Writes: the application may send only once C{peerAuthenticated} was called;
C{sendMessage} earlier raises L{NotReady} (there is nobody to send to yet).
Frames sealed in one reactor turn go out in one C{transport.writeSequence};
a turn's output reaching L{FLUSH_THRESHOLD} bytes goes at once, so the TCP
transport can pause a registered producer in time.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IProducer,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from botd2 import errors
from botd2.connection import (
    Connection,
    ConnectionFailed,
    ErrorReceived,
    Event,
    HandshakeComplete,
    Initiator,
    MessageTooLarge,
    NotReady,
    PayloadReceived,
    PingReceived,
    PongReceived,
    Responder,
    State,
)
from botd2.frames import MAX_MESSAGE
from botd2.handshake import TransportKeys
from botd2.keepalive import DEFAULT_INTERVAL, DEFAULT_PONG_TIMEOUT, KeepAlive
from botd2.keys import PeerAddress, PrivateKey, PublicKey
from botd2.messages import PayloadTypes, printable_error_message

__all__ = [
    "BOTD2Protocol",
    "MessageTooLarge",
    "NotReady",
    "PeerFactory",
    "PeerInfo",
    "PeerProtocol",
]

#: Output queued in one reactor turn beyond this goes out at once.
FLUSH_THRESHOLD: Final = 64 * 1024
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
#: Connections still in the handshake, in total (WIRE.md section 4, "Cost of
#: strangers").  Each costs a socket and a few KiB until it completes or
#: times out; an honest handshake takes milliseconds.
DEFAULT_MAX_HANDSHAKES: Final = 512
#: Connections still in the handshake from one source address.
DEFAULT_MAX_HANDSHAKES_PER_ADDRESS: Final = 16
#: All connections, complete or not, inbound and outbound.
DEFAULT_MAX_CONNECTIONS: Final = 1000
#: All connections together may hold this many bytes of frames not yet
#: whole; beyond, the connection whose last whole frame is the oldest is
#: closed (WIRE.md section 2 lets every peer send 1 MiB frames: without a
#: node-wide bound, 1,000 stalled ones would pin a GiB until keep-alive).
DEFAULT_MAX_PARTIAL_BYTES: Final = 128 * 2**20
#: Partial frames are counted from this size on (smaller ones are noise).
PARTIAL_TRACKED: Final = 64 * 1024
#: How often idle connections shed their cipher contexts (2 x ~2.5 KiB each;
#: remade, a few microseconds, on the next frame).  A connection with no frame
#: in a whole period is idle.
CIPHER_SWEEP_INTERVAL: Final = 5.0
#: A connection starts watching its send buffer (L{_SendWatch}) from a write
#: of this many bytes, or from this many frames sent, on: not before, as
#: registering a producer on Twisted's TCP transport costs some 870 bytes, and
#: most connections stay small (an idle one sends about two frames a minute
#: of keep-alive).  Until then a peer that does not read can make the node
#: hold at most WATCH_FRAMES replies of less than WATCH_WRITE bytes.
WATCH_WRITE: Final = 16 * 1024
WATCH_FRAMES: Final = 1024
#: After we decided to close, how long a peer that does not read may keep
#: the connection (and its unsent buffer) before it is aborted.
CLOSE_GRACE: Final = 10.0

_log = Logger(namespace="botd2")


def _silent(*args: object, **kwargs: object) -> None:
    """A log call that writes nothing."""


class _LogBudget:
    """
    A token bucket for the log events about strangers: C{rate} a second on
    average, C{burst} at once; what is left out is counted.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.last: float | None = None
        self.suppressed = 0

    def take(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.suppressed += 1
        return False


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """
    Who is on the other end of an authenticated connection.

    @ivar node: the peer's static public key, proven by the handshake.
    @ivar address: the TCP address of the other end.
    @ivar initiator: C{True} if we dialled, C{False} if the peer did.
    """

    node: PublicKey
    address: IAddress
    initiator: bool

    @property
    def nodeID(self) -> str:
        return self.node.node_id


def _monotonic(clock: IReactorTime) -> Callable[[], float]:
    """
    What to measure intervals with (WIRE.md section 6: on a monotonic
    clock): C{time.monotonic} under the real reactor, whose C{seconds()} is
    wall-clock time; the clock's own C{seconds} otherwise (a test's Clock).
    """
    from twisted.internet import reactor

    if clock is reactor:
        return time.monotonic
    return clock.seconds


class PeerProtocol(Protocol):
    """
    Subclass this to write a BOTD #2 application.

    Override the C{peer*} and C{messageReceived} hooks; list the protobuf
    classes you handle in L{messageTypes}.  C{self.transport} is the
    L{BOTD2Protocol} that carries this connection; C{self.peer} tells who is
    on the other end.

    @cvar messageTypes: the application message classes this protocol
        handles; a payload of any other type is passed to
        L{unhandledPayload} (which ignores it, WIRE.md section 3).
    @ivar peer: the authenticated peer, from C{peerAuthenticated} on.
    @ivar factory: the L{PeerFactory} of the node.
    """

    messageTypes: ClassVar[Sequence[type[Message]]] = ()
    _payloadTypes: ClassVar[PayloadTypes | None] = None

    factory: PeerFactory | None = None
    transport: BOTD2Protocol | None = None
    peer: PeerInfo
    _unhandledLogged = False

    # Hooks ------------------------------------------------------------------

    def peerAuthenticated(self) -> None:
        """The handshake is complete: C{self.peer} is proven. Sending may start."""

    def messageReceived(self, message: Any) -> None:
        """
        An application message of one of L{messageTypes} arrived (a
        C{Message}: typed C{Any} so that an override may name its own class).
        """

    def unhandledPayload(self, payload: any_pb2.Any) -> None:
        """
        A payload of a type not in L{messageTypes}: ignored by default, and
        the first of each connection logged (at debug level: a peer may send
        many, and each line would cost more than the frame).
        """
        if self._unhandledLogged:
            return
        self._unhandledLogged = True
        _log.debug(
            "ignored a payload of type {type_url} from {peer} (and any more on this "
            "connection, unlogged)",
            type_url=printable_error_message(payload.type_url[:100]),
            peer=self.peer.nodeID,
        )

    def peerDisconnected(self, reason: Failure) -> None:
        """
        The connection is gone.  C{reason.value} is a L{errors.Disconnected}:
        L{errors.ClosedByUs}, L{errors.ClosedByPeer} (L{errors.PeerError}
        when the peer said why), L{errors.ProtocolViolation},
        L{errors.KeepAliveTimeout} or L{errors.Replaced}.
        """

    # API ----------------------------------------------------------------------

    def sendMessage(self, message: Message) -> None:
        """Send an application message (packed in C{Any})."""
        if self.transport is None:
            raise NotReady("the handshake is not complete: send from peerAuthenticated() on")
        self.transport.sendMessage(message)

    def disconnect(self, reason: str = "closed by the application") -> None:
        """Send the peer an C{Error} with C{reason}, then close."""
        if self.transport is not None:
            self.transport.disconnect(reason)

    def ping(self) -> Deferred[float]:
        """Ping the peer now; fires with the round-trip time in seconds."""
        if self.transport is None:
            return defer.fail(NotReady("the handshake is not complete"))
        return self.transport.ping()

    # Protocol plumbing ---------------------------------------------------------

    def payloadTypes(self) -> PayloadTypes:
        """The L{PayloadTypes} made from L{messageTypes}, once per class."""
        cls = type(self)
        types = cls.__dict__.get("_payloadTypes")
        if types is None:
            types = PayloadTypes(cls.messageTypes)
            cls._payloadTypes = types
        return types

    def makeConnection(self, transport: Any) -> None:
        self.peer = transport.peer
        super().makeConnection(transport)

    def connectionMade(self) -> None:
        self.peerAuthenticated()

    def dataReceived(self, data: bytes) -> None:
        raise RuntimeError("a PeerProtocol receives messages, not bytes")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.peerDisconnected(reason)


@implementer(IPushProducer, IConsumer, ITransport)
class BOTD2Protocol(Protocol):
    """
    The BOTD #2 wire protocol on one TCP connection, and the transport of
    one L{PeerProtocol}.

    @ivar factory: the node.
    @ivar app: the application protocol, connected once the handshake is
        complete.
    @ivar connection: the sans-IO state machine.
    @ivar peer: who is on the other end, once authenticated.
    @ivar keepalive: the Ping/Pong timing, once authenticated.
    @ivar initiator: did we dial?
    @ivar authenticated: was the application told of the peer?
    @ivar disconnecting: have we decided to close?
    @ivar _reason: why we closed, for the application and the log.
    @ivar _timer: the one pending timer: handshake timeout, next Ping, Pong
        deadline or close grace.
    @ivar _flushCall: the end-of-turn flush, when one is scheduled.
    @ivar _inReceive: inside L{dataReceived}, which flushes when done.
    @ivar _pingWaiters: on-demand Pings waiting for their Pong.
    @ivar _handshakeWaiters: L{whenAuthenticated} callers.
    """

    transport: Any
    factory: PeerFactory
    peer: PeerInfo | None = None
    keepalive: KeepAlive | None = None
    authenticated = False
    disconnecting = False
    _reason: errors.Disconnected | None = None
    _timer: IDelayedCall | None = None
    _flushCall: IDelayedCall | None = None
    _inReceive = False
    _lostCalled = False
    #: A line about this connection, not yet authenticated, said why it closes.
    _strangerExplained = False
    #: The application's producer, registered through us.
    _producer: IProducer | None = None
    #: Registered on TCP once the output grew (see L{_SendWatch}).
    _watch: _SendWatch | None = None
    #: The application asked us not to read (L{pauseProducing}).
    _appPaused = False
    # Made on first use: most connections never need them, and an idle
    # connection's size is what a node with 10,000 of them pays for.
    _pingWaiters: list[tuple[str, float, Deferred[float]]] | None = None
    _handshakeWaiters: list[Deferred[BOTD2Protocol]] | None = None
    _lostWaiters: list[Deferred[errors.Disconnected]] | None = None

    def __init__(self, factory: PeerFactory, connection: Connection, app: PeerProtocol) -> None:
        self.factory = factory
        self.connection = connection
        self.app = app
        self.initiator = isinstance(connection, Initiator)
        # type URL -> message class, looked up once per connection, not per message
        self._classes = app.payloadTypes().classes

    @property
    def _clock(self) -> IReactorTime:
        return self.factory.clock

    def _now(self) -> float:
        return self.factory._now()

    def __repr__(self) -> str:
        who = self.peer.nodeID[:16] if self.peer else "?"
        direction = "out" if self.initiator else "in"
        return f"<BOTD2Protocol {direction} {who} {self.connection.state.value}>"

    # Connection lifecycle -----------------------------------------------------

    def connectionMade(self) -> None:
        self._setTimer(self.factory.handshakeTimeout, self._handshakeTimedOut)
        if isinstance(self.connection, Initiator):
            self.connection.initiate()
            self._flush()

    def dataReceived(self, data: bytes) -> None:
        if self.disconnecting:
            return
        self._inReceive = True
        try:
            events = self.connection.receive_data(data)
            classes = self._classes
            app = self.app
            for event in events:
                if type(event) is PayloadReceived:
                    # Most events: an application message, delivered here
                    # rather than in a method of its own (a call less each).
                    cls = classes.get(event.type_url)
                    if cls is None:
                        self._callApp(app.unhandledPayload, event.payload)
                    else:
                        try:
                            message = cls.FromString(event.value)  # type: ignore[arg-type]
                        except DecodeError:
                            url = printable_error_message(event.type_url[:100])
                            self._protocolError(
                                "bad_payload", f"payload of type {url} does not parse"
                            )
                            break
                        try:
                            app.messageReceived(message)
                        except Exception:
                            self._appFailed(app.messageReceived)
                else:
                    self._handle(event)
                if self.disconnecting:
                    break
        finally:
            self._inReceive = False
        held = self.connection.buffered
        if held >= PARTIAL_TRACKED or self in self.factory._partial:
            self.factory._partialFrame(self, held, bool(events))
        self._flush()
        watch = self._watch
        if watch is not None and watch.blocked and not watch.readStopped:
            # The peer sends while what we send it piles up: read no more
            # until TCP's send buffer drains.  (Only once a read came in: a
            # sender that reads nothing pays no system call per pause.)
            watch.readStopped = True
            self._updateReading()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._lostCalled:
            return
        self._lostCalled = True
        self._producer = self._watch = None  # TCP stopped what was registered
        self._cancelTimer()
        if self._flushCall is not None and self._flushCall.active():
            self._flushCall.cancel()
        self._flushCall = None
        self.connection.close()
        why = self._reason
        if why is None:
            why = errors.ClosedByPeer(
                "the peer closed the connection"
                if reason.check(ConnectionDone)
                else f"the connection was lost: {reason.getErrorMessage()}"
            )
            self._reason = why
        emit: Callable[..., None]
        if self.authenticated or self.initiator:
            emit = _log.emit
        elif self._strangerExplained:
            emit = _silent  # one line per stranger: the one that said why
        else:
            emit = self.factory._logStranger
        emit(
            self.factory.logLevel(self.authenticated),
            "botd2 connection {direction} {peer} at {address} closed: {reason}",
            direction="to" if self.initiator else "from",
            peer=self.peer.nodeID if self.peer else "(unauthenticated)",
            address=_formatAddress(self.peer.address if self.peer else self.transport.getPeer()),
            reason=str(why),
            reasonType=type(why).__name__,
            authenticated=self.authenticated,
        )
        self.factory._connectionGone(self)
        failure = Failure(why)
        pings, self._pingWaiters = self._pingWaiters or [], None
        for _, _, d in pings:
            d.errback(failure)
        if self.authenticated:
            self._callApp(self.app.connectionLost, failure)
        self._failHandshakeWaiters(why)
        waiters, self._lostWaiters = self._lostWaiters or [], None
        for lost in waiters:
            lost.callback(why)

    # Events from the sans-IO connection -------------------------------------

    def _handle(self, event: Event) -> None:
        """Every event but L{PayloadReceived} (L{dataReceived} delivers those)."""
        if isinstance(event, HandshakeComplete):
            self._handshakeComplete(event)
        elif isinstance(event, PingReceived):
            self._pingReceived(event.ping_id)
        elif isinstance(event, PongReceived):
            self._pongReceived(event.ping_id)
        elif isinstance(event, ErrorReceived):
            self._close(errors.PeerError(event.message), abort=not self.authenticated)
        elif isinstance(event, ConnectionFailed):
            # The sans-IO connection has closed and queued what the rules
            # allow (an Error, or nothing): send that, add nothing.
            self._logProtocolError(event.code, event.reason)
            self._close(
                errors.ProtocolViolation(event.code, event.reason),
                abort=not self.authenticated or event.code == "bad_tag",
            )

    def _handshakeComplete(self, event: HandshakeComplete) -> None:
        self._cancelTimer()
        self.peer = PeerInfo(event.peer, self.transport.getPeer(), self.initiator)
        kept, why = self.factory._handshakeDone(self)
        if not kept:
            self._closeWithError(errors.Replaced(why), why)
            return
        if self.factory.keyLog is not None and self.connection.keys is not None:
            self.factory.keyLog(self, self.connection.keys)
        self.connection.forget_keys()
        # Most connections idle after their handshake: shed the cipher the
        # key confirmation made now (the sweep would in 5-10 s), so memory
        # freed by one connection serves the next, not only peak RSS.
        self.connection.release_idle_ciphers(force=True)
        self.keepalive = KeepAlive(self.factory.pingInterval, self.factory.pongTimeout)
        self.keepalive.start(self._now())
        self._scheduleKeepAlive()
        self.authenticated = True
        _log.info(
            "botd2 handshake with {peer} at {address} complete ({direction})",
            peer=event.peer.node_id,
            address=_formatAddress(self.peer.address),
            direction="outbound" if self.initiator else "inbound",
            initiator=self.initiator,
        )
        self._callApp(self.app.makeConnection, self)
        if self.disconnecting:
            # The application closed it from peerAuthenticated (or raised there).
            assert self._reason is not None
            self._failHandshakeWaiters(self._reason)
        else:
            waiters, self._handshakeWaiters = self._handshakeWaiters or [], None
            for d in waiters:
                d.callback(self)

    def _pingReceived(self, pingID: str) -> None:
        assert self.keepalive is not None
        if not self.keepalive.pingArrived(self._now()):
            self._protocolError("ping_flood", "Pings less than 30 s apart")
            return
        if not self.connection.closed:  # a later frame of this read may have closed it
            self.connection.send_pong(pingID)

    def _pongReceived(self, pingID: str) -> None:
        assert self.keepalive is not None
        now = self._now()
        if not self.keepalive.pongReceived(pingID, now):
            return  # WIRE.md section 6: a Pong for no outstanding Ping is ignored
        # One Ping is outstanding at a time, so any waiter waits for this Pong.
        waiters, self._pingWaiters = self._pingWaiters or [], None
        for _, sentAt, d in waiters:
            d.callback(now - sentAt)
        self._scheduleKeepAlive()

    def _protocolError(self, code: str, reason: str) -> None:
        """A rule broken that this layer saw (flood, bad payload): Error, close."""
        self._logProtocolError(code, reason)
        self._closeWithError(errors.ProtocolViolation(code, reason), reason)

    def _logProtocolError(self, code: str, reason: str) -> None:
        self._strangerExplained = not self.authenticated
        emit = _log.emit if self.authenticated or self.initiator else self.factory._logStranger
        emit(
            LogLevel.warn,
            "botd2 protocol error from {peer} at {address}: {code}: {reason}",
            peer=self.peer.nodeID if self.peer else "(unauthenticated)",
            address=_formatAddress(self.transport.getPeer()),
            code=code,
            reason=reason,
        )

    # Timers ------------------------------------------------------------------

    def _setTimer(self, delay: float, f: Callable[[], None]) -> None:
        self._cancelTimer()
        self._timer = self._clock.callLater(max(0.0, delay), f)

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _evict(self, why: str) -> None:
        """Closed by the node to admit another stranger: nothing is sent."""
        if not self.disconnecting:
            self.factory._logStranger(
                LogLevel.debug,
                "botd2 handshake from {address} {why}",
                address=_formatAddress(self.transport.getPeer()),
                why=why,
            )
            self._strangerExplained = True
            self._close(errors.ClosedByUs(why), abort=True)
        # Twisted closes an aborted TCP socket on its next turn, and the
        # newcomer's is open already (several, when one read of the listening
        # socket accepts many): close this one now, so that the node never
        # holds more sockets than its caps.  Twisted's TCP transport ignores
        # the connectionLost it scheduled once its socket is gone.
        transport = self.transport
        if hasattr(transport, "socket") and not self._lostCalled:
            transport.connectionLost(Failure(ConnectionAborted()))

    def _partialBudgetExceeded(self) -> None:
        """Closed by the node: the stalest partial frame while the budget is full."""
        why = "the node's buffer for partial frames is full"
        self._closeWithError(errors.ClosedByUs(why), why)

    def _handshakeTimedOut(self) -> None:
        self._timer = None
        if self.connection.handshake_complete or self.disconnecting:
            return
        self._strangerExplained = True
        emit = _log.emit if self.initiator else self.factory._logStranger
        emit(
            LogLevel.info,
            "botd2 handshake {direction} {address} timed out",
            direction="to" if self.initiator else "from",
            address=_formatAddress(self.transport.getPeer()),
        )
        self._close(
            errors.ProtocolViolation(
                "handshake_timeout",
                f"handshake not complete after {self.factory.handshakeTimeout:g} s",
            ),
            abort=True,
        )

    def _scheduleKeepAlive(self) -> None:
        assert self.keepalive is not None
        if self.disconnecting:
            return  # the timer is the close grace now (a Pong's callback may have closed)
        deadline = self.keepalive.nextDeadline()
        if deadline is None:
            self._cancelTimer()
        else:
            self._setTimer(deadline - self._now(), self._keepAliveTimer)

    def _keepAliveTimer(self) -> None:
        self._timer = None
        if self.disconnecting or self.keepalive is None:
            return
        now = self._now()
        if self.keepalive.pongOverdue(now):
            why = f"no Pong within {self.keepalive.pongTimeout:g} s"
            self._closeWithError(errors.KeepAliveTimeout(why), why)
            return
        if self.keepalive.pingDue(now):
            self._sendPing(now)
        self._scheduleKeepAlive()

    def _sendPing(self, now: float) -> str:
        assert self.keepalive is not None
        pingID = self.connection.send_ping()
        self.keepalive.pingSent(pingID, now)
        self._scheduleFlush()
        return pingID

    # Output -------------------------------------------------------------------

    def _scheduleFlush(self) -> None:
        # Past the threshold, write now, even inside dataReceived: an app
        # sending from a handler must reach TCP, which pauses its producer.
        if self.connection._out_size >= FLUSH_THRESHOLD:
            self._flush()
        elif self._inReceive:
            return  # dataReceived flushes when it is done
        elif self._flushCall is None:
            self._flushCall = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        if self._flushCall is not None:
            if self._flushCall.active():
                self._flushCall.cancel()
            self._flushCall = None
        if self.connection._out_size:
            # One write of the joined chunks: Twisted joins them anyway before
            # sending, and checks each item of a writeSequence one by one.
            data = b"".join(self.connection.take_output())
            self.transport.write(data)
            if self._watch is None and self._producer is None and not self.disconnecting and (
                len(data) >= WATCH_WRITE or self.connection.frames_sent >= WATCH_FRAMES
            ):
                self._watchSends()

    def _watchSends(self, appProducer: IPushProducer | None = None) -> None:
        """Register a L{_SendWatch} on TCP (once the output grew)."""
        self._watch = _SendWatch(self, appProducer)
        self.transport.registerProducer(self._watch, True)

    def _updateReading(self) -> None:
        """Read from TCP unless the application, or a full send buffer, says not to."""
        watch = self._watch
        if self._appPaused or (watch is not None and watch.readStopped):
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    # Closing -------------------------------------------------------------------

    def _closeWithError(self, why: errors.Disconnected, message: str) -> None:
        """Close; once authenticated, an Error with C{message} goes first."""
        if self.disconnecting:
            return
        if self.connection.handshake_complete:
            self.connection.send_error(message)
            self._close(why, abort=False)
        elif self.authenticated:
            # A later frame of the same read already closed the sans-IO
            # connection (its events are handled after it parsed them all):
            # send what it queued, an Error or nothing, as the rules say.
            self._close(why, abort=False)
        else:
            self._close(why, abort=True)

    def _close(self, why: errors.Disconnected, abort: bool) -> None:
        """
        Close the TCP connection.  Before the handshake is complete nothing
        more is sent and the connection is aborted at once; after it, queued
        frames (an Error, say) are flushed first, for at most L{CLOSE_GRACE}
        seconds.
        """
        if self.disconnecting or self._lostCalled:
            return  # closing already, or gone (the app may call from peerDisconnected)
        self.disconnecting = True
        self._reason = why
        self._cancelTimer()
        if abort:
            self.connection.close()
            self.connection.take_output()
            self.transport.abortConnection()
            return
        self.connection.close()
        producer, self._producer = self._producer, None
        if producer is not None or self._watch is not None:
            # TCP would wait for a producer to go before closing, and what the
            # application's makes now is dropped: its consumer is gone, stop it.
            # (Before the last flush, which TCP would answer with a pause.)
            self._watch = None
            self.transport.unregisterProducer()
        self._flush()
        self.transport.loseConnection()
        self._setTimer(CLOSE_GRACE, self.transport.abortConnection)
        if producer is not None:
            self._callApp(producer.stopProducing)

    def _callApp(self, f: Callable[..., object], *args: object) -> None:
        """
        Call application code.  An exception there is the application's bug,
        not the peer's: log it with its traceback and close the connection.
        """
        try:
            f(*args)
        except Exception:
            self._appFailed(f)

    def _appFailed(self, f: Callable[..., object]) -> None:
        """Log the exception being handled, with its traceback; close."""
        _log.failure(
            "botd2 application error in {name}; closing the connection",
            name=getattr(f, "__qualname__", repr(f)),
        )
        self._closeWithError(errors.ClosedByUs("application error"), "internal error")

    def _failHandshakeWaiters(self, why: errors.Disconnected) -> None:
        waiters, self._handshakeWaiters = self._handshakeWaiters or [], None
        if not waiters:
            return
        failure: errors.ConnectFailed
        if self.authenticated:
            failure = errors.ConnectFailed(f"closed as soon as the handshake completed: {why}")
        elif isinstance(why, errors.ProtocolViolation) and why.code == "handshake_timeout":
            failure = errors.HandshakeTimeout(why.reason)
        elif isinstance(why, errors.ClosedByPeer):
            failure = errors.HandshakeFailed(
                "the peer closed the connection during the handshake (a wrong "
                "node ID, a node that does not allow our key, or one too busy)"
            )
        else:
            failure = errors.HandshakeFailed(f"handshake failed: {why}")
        for d in waiters:
            d.errback(Failure(failure))

    # The transport of the application protocol --------------------------------

    def whenAuthenticated(self) -> Deferred[BOTD2Protocol]:
        """A Deferred that fires with this protocol once the handshake is complete."""
        if self.authenticated:
            return defer.succeed(self)
        if self.disconnecting or self._lostCalled:
            return defer.fail(errors.HandshakeFailed(f"connection closed: {self._reason}"))
        d: Deferred[BOTD2Protocol] = Deferred()
        if self._handshakeWaiters is None:
            self._handshakeWaiters = []
        self._handshakeWaiters.append(d)
        return d

    def whenLost(self) -> Deferred[errors.Disconnected]:
        """
        A Deferred that fires once the connection is gone, with why: an
        L{errors.Disconnected} (as a result, not as a failure).
        """
        if self._lostCalled:
            assert self._reason is not None
            return defer.succeed(self._reason)
        d: Deferred[errors.Disconnected] = Deferred()
        if self._lostWaiters is None:
            self._lostWaiters = []
        self._lostWaiters.append(d)
        return d

    def sendMessage(self, message: Message) -> None:
        """
        Seal an application message into a frame.  After the connection was
        closed it is dropped, as C{transport.write} drops data then.
        """
        if not self.authenticated:
            raise NotReady("the handshake is not complete: send from peerAuthenticated() on")
        connection = self.connection
        if self.disconnecting or connection.state is State.CLOSED:
            return  # closing, maybe by a later frame of the read being handled
        connection.send_payload(message)
        self._scheduleFlush()

    def write(self, data: bytes) -> None:
        raise TypeError("a BOTD #2 connection carries messages: use sendMessage()")

    def writeSequence(self, data: Iterable[bytes]) -> None:
        raise TypeError("a BOTD #2 connection carries messages: use sendMessage()")

    def disconnect(self, reason: str = "closed by the application") -> None:
        """Send an Error saying C{reason} (once authenticated), then close."""
        self._closeWithError(errors.ClosedByUs(reason), reason)

    def loseConnection(self) -> None:
        self.disconnect()

    def abortConnection(self) -> None:
        self._close(errors.ClosedByUs("aborted by the application"), abort=True)

    def ping(self) -> Deferred[float]:
        """
        Send a Ping now (WIRE.md section 6, "On demand"); fires with the
        round-trip time in seconds, or fails if the connection ends first.
        Refused while a Ping is outstanding or within 30 s of the last Pong.
        """
        if (
            not self.authenticated
            or self.disconnecting
            or self._lostCalled
            or self.connection.closed
            or self.keepalive is None
        ):
            return defer.fail(NotReady("the connection is not open"))
        now = self._now()
        if not self.keepalive.mayPingNow(now):
            return defer.fail(
                NotReady("a Ping is outstanding, or the last Pong came less than 30 s ago")
            )
        d: Deferred[float] = Deferred()
        pingID = self._sendPing(now)
        if self._pingWaiters is None:
            self._pingWaiters = []
        self._pingWaiters.append((pingID, now, d))
        self._scheduleKeepAlive()
        return d

    def getPeer(self) -> IAddress:
        return self.transport.getPeer()  # type: ignore[no-any-return]

    def getHost(self) -> IAddress:
        return self.transport.getHost()  # type: ignore[no-any-return]

    # IConsumer: the application's producer is paused when TCP's buffer is full.
    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(f"a producer is registered already: {self._producer!r}")
        if self.disconnecting or self._lostCalled:
            producer.stopProducing()  # as TCP does for a closed connection
            return
        self._producer = producer
        if streaming:
            # Through a watch: TCP's buffer full pauses it and stops reading.
            if self._watch is None:
                self._watchSends(producer)  # type: ignore[arg-type]
            else:
                self._watch.appProducer = producer  # type: ignore[assignment]
        else:
            # A pull producer makes data only when asked: straight to TCP.
            if self._watch is not None:
                self._watch = None
                self.transport.unregisterProducer()
                self._updateReading()
            self.transport.registerProducer(producer, False)

    def unregisterProducer(self) -> None:
        self._producer = None
        if self._watch is not None:
            self._watch.appProducer = None  # the watch stays: the output grew
        elif not self._lostCalled:
            self.transport.unregisterProducer()

    # IPushProducer: the application pausing us stops reading from TCP.
    def pauseProducing(self) -> None:
        self._appPaused = True
        self._updateReading()

    def resumeProducing(self) -> None:
        self._appPaused = False
        self._updateReading()

    def stopProducing(self) -> None:
        self.abortConnection()


@implementer(IPushProducer)
class _SendWatch:
    """
    What a L{BOTD2Protocol} registers on its TCP transport once its output
    grew: while TCP's send buffer is full (a peer that does not read), the
    node stops reading from that peer, as Bitcoin Core stops processing a
    peer whose send buffer is full, so a peer that sends and never reads
    cannot make an application that replies buffer without bound.  The
    application's streaming producer, if any, is paused and resumed with it.
    """

    __slots__ = ("proto", "appProducer", "blocked", "readStopped")

    def __init__(self, proto: BOTD2Protocol, appProducer: IPushProducer | None) -> None:
        self.proto = proto
        self.appProducer = appProducer
        #: TCP's send buffer is full.
        self.blocked = False
        #: ... and a read came in meanwhile, so reading stopped.
        self.readStopped = False

    def pauseProducing(self) -> None:
        self.blocked = True
        if self.appProducer is not None:
            self.proto._callApp(self.appProducer.pauseProducing)

    def resumeProducing(self) -> None:
        self.blocked = False
        if self.readStopped:
            self.readStopped = False
            self.proto._updateReading()
        if self.appProducer is not None:
            self.proto._callApp(self.appProducer.resumeProducing)

    def stopProducing(self) -> None:
        # TCP's connectionLost; BOTD2Protocol's tells the application why.
        if self.appProducer is not None:
            self.proto._callApp(self.appProducer.stopProducing)


def clientEndpoint(
    reactor: Any,
    address: PeerAddress,
    timeout: float,
    bindAddress: tuple[str, int] | None = None,
) -> IStreamClientEndpoint:
    """
    The endpoint that dials C{address}: plain TCP for an IP address, and
    C{HostnameEndpoint} (name resolution, happy eyeballs) for a name only;
    for a literal address it would cost a thread-pool lookup per connection.
    """
    version = _ipVersion(address.host)
    if version is None:
        return HostnameEndpoint(
            reactor, address.host, address.port, timeout=timeout, bindAddress=bindAddress
        )
    cls = TCP4ClientEndpoint if version == 4 else TCP6ClientEndpoint
    endpoint: IStreamClientEndpoint = cls(
        reactor, address.host, address.port, timeout=timeout, bindAddress=bindAddress
    )
    return endpoint


@functools.lru_cache(maxsize=256)
def _ipVersion(host: str) -> int | None:
    """4 or 6 for an IP address, C{None} for a name (a node dials the same few)."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def _sourceKey(address: object) -> str | None:
    """
    What the per-address handshake cap counts by: the IPv4 address (also
    when it arrives IPv4-mapped on a dual-stack socket), or the /64 of an
    IPv6 address (one host commonly holds a whole /64).
    """
    host: str | None = getattr(address, "host", None)
    if host is None or ":" not in host:
        return host
    try:
        ip = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        # an IPv4 peer on a dual-stack socket: counted as the IPv4 address
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


def _allowedKey(key: object) -> PublicKey:
    """An entry of C{allow}: a L{PublicKey}, or a node ID as text."""
    if isinstance(key, PublicKey):
        return key
    if isinstance(key, str):
        return PublicKey.from_node_id(key)
    raise TypeError(f"allow: expected PublicKeys or node IDs, got {type(key).__name__}")


def _guardedPolicy(policy: Callable[[PublicKey], bool]) -> Callable[[PublicKey], bool]:
    """
    The application's C{allow} callable, where an exception (the
    application's bug, or its allow-list store down) refuses the key and is
    logged with its traceback, instead of escaping into the reactor.
    """

    def allow(key: PublicKey) -> bool:
        try:
            return bool(policy(key))
        except Exception:
            _log.failure(
                "botd2 application error in the allow policy; refusing node {nodeID}",
                nodeID=key.node_id,
            )
            return False

    return allow


def _formatAddress(address: object) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address)
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class PeerFactory(Factory):
    """
    A BOTD #2 node: its identity, its settings, its connections.

    Listen with it as with any factory (C{endpoint.listen(factory)}); dial
    out with L{connect}.  Set L{protocol} (or pass C{protocol=}) to the
    application's L{PeerProtocol} subclass.

    @ivar identity: our static key.
    @ivar keyLog: for debugging only, like TLS's SSLKEYLOGFILE: called with
        each connection and its session keys when its handshake completes
        (otherwise the keys are forgotten then). Never set it in production.
    @ivar peers: the complete connection kept for each peer (WIRE.md §7).
    @ivar clock: the clock of every timer.
    """

    protocol: type[PeerProtocol] = PeerProtocol  # type: ignore[assignment]
    noisy = False  # botd2 logs its own events, one per connection
    #: Log events about strangers, a second on average and at once: what an
    #: attack can make the node write (one line is about 300 bytes).
    strangerLogRate: float = 10.0
    strangerLogBurst: int = 100

    def __init__(
        self,
        identity: PrivateKey,
        *,
        protocol: type[PeerProtocol] | None = None,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        allow: Iterable[PublicKey | str] | Callable[[PublicKey], bool] | None = None,
        handshakeTimeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        pingInterval: float = DEFAULT_INTERVAL,
        pongTimeout: float = DEFAULT_PONG_TIMEOUT,
        maxHandshakes: int = DEFAULT_MAX_HANDSHAKES,
        maxHandshakesPerAddress: int = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
        maxConnections: int = DEFAULT_MAX_CONNECTIONS,
        maxMessage: int = MAX_MESSAGE,
        maxPartialBytes: int = DEFAULT_MAX_PARTIAL_BYTES,
        keyLog: Callable[[BOTD2Protocol, TransportKeys], object] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        if not handshakeTimeout > 0:
            raise ValueError("the handshake timeout must be positive")
        KeepAlive(pingInterval, pongTimeout)  # validates both
        for name, value in (
            ("maxHandshakes", maxHandshakes),
            ("maxHandshakesPerAddress", maxHandshakesPerAddress),
            ("maxConnections", maxConnections),
            ("maxPartialBytes", maxPartialBytes),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1")
        if maxMessage < MAX_MESSAGE:
            raise ValueError(f"maxMessage must be at least {MAX_MESSAGE}")
        self.identity = identity
        if protocol is not None:
            self.protocol = protocol
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self._now = _monotonic(self.clock)
        if allow is None:
            self.allow: Callable[[PublicKey], bool] | None = None
        elif callable(allow):
            self.allow = _guardedPolicy(allow)
        else:
            allowed = frozenset(_allowedKey(key) for key in allow)
            self.allow = allowed.__contains__
        self.handshakeTimeout = float(handshakeTimeout)
        self.pingInterval = float(pingInterval)
        self.pongTimeout = float(pongTimeout)
        self.maxHandshakes = maxHandshakes
        self.maxHandshakesPerAddress = maxHandshakesPerAddress
        self.maxConnections = maxConnections
        self.maxMessage = maxMessage
        self.keyLog = keyLog
        self.peers: dict[PublicKey, BOTD2Protocol] = {}
        self.connections: set[BOTD2Protocol] = set()
        self._handshaking: dict[BOTD2Protocol, str | None] = {}
        # Insertion-ordered: the first of each is its oldest handshake.
        self._handshakingByHost: dict[str | None, dict[BOTD2Protocol, None]] = {}
        self._dials: dict[PublicKey, _Dial] = {}
        # The next cipher sweep, pending while any connection exists (a
        # callLater, not a LoopingCall: a node dialling one peer at a time
        # starts and stops it with every connection).
        self._sweep: IDelayedCall | None = None
        self._peerGoneWaiters: dict[PublicKey, list[Deferred[None]]] = {}
        self._strangerLog = _LogBudget(self.strangerLogRate, self.strangerLogBurst)
        self.maxPartialBytes = maxPartialBytes
        # Connections holding a partial frame of PARTIAL_TRACKED bytes or
        # more, and its size; in the order of their last whole frame (or of
        # when they began to hold one), the stalest first.
        self._partial: dict[BOTD2Protocol, int] = {}
        self._partialBytes = 0

    @property
    def nodeID(self) -> str:
        """This node's own ID: the lowercase hex of its static public key."""
        return self.identity.public_key.node_id

    @staticmethod
    def logLevel(authenticated: bool) -> Any:
        return LogLevel.info if authenticated else LogLevel.debug

    def _logStranger(self, level: LogLevel, format: str, **kwargs: object) -> None:
        """
        Log an event about a stranger (an inbound connection not yet
        authenticated: refused, evicted, broke a rule, timed out, closed),
        within L{strangerLogRate}; the events left out are counted, and the
        count logged once the budget allows again.
        """
        if self._strangerLog.take(self._now()):
            self._logSuppressed()
            _log.emit(level, format, **kwargs)

    def stopFactory(self) -> None:
        """The node stops listening: the count of left-out events is not lost."""
        self._logSuppressed()
        self._stopSweepIfIdle()

    def _stopSweepIfIdle(self) -> None:
        """
        No connection left: the sweep stops, unless the node listens and a
        count of left-out log events waits for it (the end of a flood).
        """
        if self.connections or self._sweep is None:
            return
        if self._strangerLog.suppressed and self.numPorts:
            return
        self._logSuppressed()
        if self._sweep.active():
            self._sweep.cancel()
        self._sweep = None

    def _logSuppressed(self) -> None:
        budget = self._strangerLog
        if budget.suppressed:
            _log.warn(
                "botd2 left {count} log events about unauthenticated connections out "
                "(more than {rate:g} a second)",
                count=budget.suppressed,
                rate=budget.rate,
            )
            budget.suppressed = 0

    # Building protocols ----------------------------------------------------------

    def buildProtocol(self, addr: IAddress) -> BOTD2Protocol | None:  # type: ignore[override]
        """
        An inbound connection: admitted, or refused at once beyond a cap.

        When a total cap (handshakes, or connections) is full, a stranger
        from an address holding fewer handshakes in progress than the
        busiest address is admitted in place of that address's oldest
        handshake, which is closed without a word: as Bitcoin Core evicts
        inbound peers by network group, so that whoever holds many slots
        from few addresses cannot lock everyone else out.  Only when every
        address holds about the same share is a stranger refused.
        """
        host = _sourceKey(addr)
        held = self._handshakingByHost.get(host)
        count = len(held) if held else 0
        refusal = None
        if count >= self.maxHandshakesPerAddress:
            refusal = f"{self.maxHandshakesPerAddress} handshakes from {host} in progress already"
        elif len(self.connections) >= self.maxConnections:
            refusal = f"{self.maxConnections} connections already"
        elif len(self._handshaking) >= self.maxHandshakes:
            refusal = f"{self.maxHandshakes} handshakes in progress already"
        if (
            refusal is not None
            and count < self.maxHandshakesPerAddress
            and self._evictFor(count, _formatAddress(addr))
        ):
            refusal = None
        if refusal is not None:
            self._logStranger(LogLevel.debug, "botd2 refused a connection from {address}: {why}",
                              address=_formatAddress(addr), why=refusal)
            return None
        connection = Responder(self.identity, allow=self.allow, max_message=self.maxMessage)
        proto = self.wrap(connection)
        self._handshaking[proto] = host
        if held is None:
            self._handshakingByHost[host] = {proto: None}
        else:
            held[proto] = None
        return proto

    def _evictFor(self, count: int, newcomer: str) -> bool:
        """
        Make room for a stranger whose address holds C{count} handshakes in
        progress: close the oldest handshake of the address holding the most,
        if that is at least two more.  Did it?
        """
        busiest = max(self._handshakingByHost.values(), key=len, default=None)
        if busiest is None or len(busiest) < count + 2:
            return False
        victim = next(iter(busiest))
        self._doneHandshaking(victim)
        self.connections.discard(victim)
        victim._evict(f"evicted for a newer handshake from {newcomer}")
        return True

    def wrap(self, connection: Connection) -> BOTD2Protocol:
        """
        A L{BOTD2Protocol} for a sans-IO connection made by the caller (tests
        use it to inject ephemeral keys and ids); no admission check.
        """
        app = self.protocol()
        app.factory = self
        proto = BOTD2Protocol(self, connection, app)
        self.connections.add(proto)
        if self._sweep is None:
            self._sweep = self.clock.callLater(CIPHER_SWEEP_INTERVAL, self._sweepCiphers)
        return proto

    def _sweepCiphers(self) -> None:
        for proto in self.connections:
            proto.connection.release_idle_ciphers()
        if self._strangerLog.suppressed and self._strangerLog.take(self._now()):
            self._logSuppressed()
        # Pending while connections exist, or a count of left-out log events
        # waits to be written (after a flood that ended, say).
        if self.connections or (self._strangerLog.suppressed and self.numPorts):
            self._sweep = self.clock.callLater(CIPHER_SWEEP_INTERVAL, self._sweepCiphers)
        else:
            self._sweep = None

    def buildInitiator(self, node: PublicKey) -> BOTD2Protocol:
        """An outbound connection to C{node}."""
        connection = Initiator(self.identity, node, max_message=self.maxMessage)
        return self.wrap(connection)

    # Bookkeeping ------------------------------------------------------------------

    def _doneHandshaking(self, proto: BOTD2Protocol) -> None:
        if proto in self._handshaking:
            host = self._handshaking.pop(proto)
            held = self._handshakingByHost[host]
            del held[proto]
            if not held:
                del self._handshakingByHost[host]

    def _handshakeDone(self, proto: BOTD2Protocol) -> tuple[bool, str]:
        """
        WIRE.md section 7: may C{proto}, just complete, stay?  If it
        replaces an older connection, that one is closed here.
        """
        self._doneHandshaking(proto)
        assert proto.peer is not None
        node = proto.peer.node
        old = self.peers.get(node)
        if old is None or old is proto or old.disconnecting:
            # (one closing already is on its way out: it does not compete)
            self.peers[node] = proto
            return True, ""
        if old.initiator == proto.initiator:
            keepNew = True
            why = "replaced by a newer connection from the same side"
        else:
            # both dialled at once: the connection dialled by the lower ID stays
            weAreLower = bytes(self.identity.public_key) < bytes(node)
            keepNew = proto.initiator == weAreLower
            why = "both sides dialled: keeping the connection dialled by the lower node ID"
        if not keepNew:
            return False, why
        self.peers[node] = proto
        old._closeWithError(errors.Replaced(why), why)
        return True, ""

    def _partialFrame(self, proto: BOTD2Protocol, held: int, progressed: bool) -> None:
        """
        After a read: C{proto} holds C{held} bytes of a frame not yet whole,
        and has (C{progressed}) or has not completed a frame in that read.
        Over L{maxPartialBytes} in all, close the stalest holders.
        """
        partial = self._partial
        old = partial.pop(proto, 0) if progressed else partial.get(proto, 0)
        if held >= PARTIAL_TRACKED and not proto.disconnecting:
            partial[proto] = held  # at the end if it progressed, else where it was
            self._partialBytes += held - old
        else:
            partial.pop(proto, None)
            self._partialBytes -= old
        while self._partialBytes > self.maxPartialBytes:
            victim = next(iter(partial))
            self._partialBytes -= partial.pop(victim)
            victim._partialBudgetExceeded()

    def _connectionGone(self, proto: BOTD2Protocol) -> None:
        self._partialBytes -= self._partial.pop(proto, 0)
        self._doneHandshaking(proto)
        self.connections.discard(proto)
        self._stopSweepIfIdle()
        if proto.peer is not None and self.peers.get(proto.peer.node) is proto:
            del self.peers[proto.peer.node]
            for d in self._peerGoneWaiters.pop(proto.peer.node, []):
                d.callback(None)

    def whenPeerGone(self, node: PublicKey) -> Deferred[None]:
        """Fires once we hold no complete connection to C{node}."""
        if node not in self.peers:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._peerGoneWaiters.setdefault(node, []).append(d)
        return d

    # Dialling out ---------------------------------------------------------------------

    def connect(
        self, address: str | PeerAddress, *, bindAddress: tuple[str, int] | None = None
    ) -> Deferred[PeerProtocol]:
        """
        Dial C{NODEID@HOST[:PORT]}; fires with the application protocol once
        the handshake is complete.

        If a complete connection to that node exists already, it fires with
        that one at once (WIRE.md section 7 keeps one per peer).  Fails with
        L{errors.HandshakeFailed}, L{errors.HandshakeTimeout}, or Twisted's
        error when the TCP connection fails; a bad address raises
        L{botd2.keys.InvalidAddress}.
        """
        if isinstance(address, str):
            address = PeerAddress.parse(address)
        endpoint = clientEndpoint(
            self.reactor, address, timeout=self.handshakeTimeout, bindAddress=bindAddress
        )
        return self.connectEndpoint(endpoint, address.node)

    def connectEndpoint(
        self, endpoint: IStreamClientEndpoint, node: PublicKey
    ) -> Deferred[PeerProtocol]:
        """Like L{connect}, over any client endpoint, to the node C{node}."""
        if node == self.identity.public_key:
            return defer.fail(ValueError("a node does not connect to itself"))
        existing = self.peers.get(node)
        if existing is not None and not existing.disconnecting:
            return defer.succeed(existing.app)
        dial = self._dials.get(node)
        if dial is not None:
            # WIRE.md section 7: no second handshake to a peer while one is on.
            return dial.wait()
        dial = self._dials[node] = _Dial(self._dials, node)
        waiter = dial.wait()

        def authenticated(p: object) -> Deferred[BOTD2Protocol]:
            assert isinstance(p, BOTD2Protocol)
            return p.whenAuthenticated()

        def done(outcome: BOTD2Protocol | Failure) -> None:
            dial.forget()
            if isinstance(outcome, BOTD2Protocol):
                dial.fire(outcome.app)
                return
            # Both sides dialled at once and the peer's connection was kept
            # (WIRE.md section 7), or one came in meanwhile: that one, then.
            kept = self.peers.get(node)
            if kept is not None and kept.authenticated and not kept.disconnecting:
                dial.fire(kept.app)
            else:
                dial.fire(outcome)

        dial.connecting = endpoint.connect(_DialFactory(self, node, dial))
        dial.connecting.addCallback(authenticated).addBoth(done)
        return waiter


class _Dial:
    """
    One dial to a node in progress, and the L{PeerFactory.connect} callers
    waiting for it; each may cancel its own wait, and the dial stops only
    once no caller is left.
    """

    def __init__(self, table: dict[PublicKey, _Dial], node: PublicKey) -> None:
        self.table = table
        self.node = node
        self.waiters: list[Deferred[PeerProtocol]] = []
        self.built: BOTD2Protocol | None = None
        self.connecting: Deferred[Any] | None = None

    def forget(self) -> None:
        """Off the node's table: a later connect dials anew."""
        if self.table.get(self.node) is self:
            del self.table[self.node]

    def wait(self) -> Deferred[PeerProtocol]:
        d: Deferred[PeerProtocol] = Deferred(self._cancelled)
        self.waiters.append(d)
        return d

    def _cancelled(self, d: Deferred[PeerProtocol]) -> None:
        # Deferred.cancel fails d with CancelledError once this returns.
        if d not in self.waiters:
            return  # fire() is handing out the outcome: cancel only this one
        self.waiters.remove(d)
        if self.waiters:
            return
        self.forget()
        if self.built is not None:
            self.built.abortConnection()
        elif self.connecting is not None:
            self.connecting.cancel()

    def fire(self, result: PeerProtocol | Failure) -> None:
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            if d.called:
                continue  # cancelled from an earlier waiter's callback
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


class _DialFactory(ClientFactory):
    """Builds the one outbound L{BOTD2Protocol} of a dial."""

    noisy = False

    def __init__(self, node: PeerFactory, peer: PublicKey, dial: _Dial) -> None:
        self.node = node
        self.peer = peer
        self.dial = dial

    def buildProtocol(self, addr: IAddress) -> BOTD2Protocol:  # type: ignore[override]
        proto = self.node.buildInitiator(self.peer)
        self.dial.built = proto
        return proto

