"""
Why a connection ended, and why a connection attempt failed.

A L{botd2.protocol.PeerProtocol} is told how its connection ended through
C{peerDisconnected(reason)}, where C{reason} is a Failure wrapping one of the
L{Disconnected} subclasses below; C{reason.check(Replaced)} and the like tell
them apart.  A failed L{botd2.protocol.PeerFactory.connect} fails with a
L{ConnectFailed} subclass, or with Twisted's own error when the TCP connect
itself fails (C{ConnectionRefusedError}, C{DNSLookupError}, ...).
"""

from __future__ import annotations


class Disconnected(Exception):
    """Base of the reasons an authenticated connection ended."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class ClosedByUs(Disconnected):
    """Our application (or the node shutting down) closed the connection."""


class ClosedByPeer(Disconnected):
    """The peer closed the TCP connection, or it was reset."""


class PeerError(ClosedByPeer):
    """
    The peer sent an C{Error} and we closed.

    @ivar message: the peer's reason, at most 256 bytes, control characters
        escaped: safe to log, not to trust.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"the peer sent an Error: {message}")
        self.message = message


class ProtocolViolation(Disconnected):
    """
    The peer broke a rule of WIRE.md; we closed (after an C{Error} where the
    rules allow one).

    @ivar code: a short stable name of the rule (C{bad_tag}, C{ping_flood}, ...).
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"protocol error ({code}): {reason}")
        self.code = code


class KeepAliveTimeout(Disconnected):
    """Our Ping went unanswered for the pong timeout."""


class Replaced(Disconnected):
    """
    Another complete connection to the same peer was kept instead of this
    one (WIRE.md section 7: a reconnect, or both sides dialled at once).
    """


class ConnectFailed(Exception):
    """A connection attempt that did not reach a complete handshake."""


class HandshakeFailed(ConnectFailed):
    """The handshake was refused or broken; the message says what we saw."""


class HandshakeTimeout(ConnectFailed):
    """The handshake did not complete within the handshake timeout."""
