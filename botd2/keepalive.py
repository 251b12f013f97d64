# -*- test-case-name: tests.test_keepalive -*-
"""
Ping/Pong timing for one connection (WIRE.md section 6), as pure code.

Times are seconds on a monotonic clock, passed in by the caller; nothing
here schedules anything.  The Twisted layer asks L{KeepAlive.nextDeadline}
when to wake up and calls the matching method when it does.

Sending side::

    handshake complete at t0 -> first Ping due at t0 + interval
    Ping sent at s           -> Pong due by s + pong_timeout, else close
    Pong received at p       -> next Ping due at max(s + interval, p + 30)

Receiving side: a Ping arriving less than 30 s after the previous one is a
flood.  Two conforming peers never trip it: a Ping is only sent 30 s after
the Pong to the previous one was received, which is after that Ping arrived.
"""

from __future__ import annotations

from typing import Final

#: The shortest gap between two Pings on a connection (WIRE.md section 6).
MIN_PING_GAP: Final = 30.0
DEFAULT_INTERVAL: Final = 60.0
DEFAULT_PONG_TIMEOUT: Final = 30.0


class KeepAlive:
    """
    @ivar interval: seconds between Pings (at least 30).
    @ivar pongTimeout: seconds to wait for a Pong.
    @ivar outstanding: the id of the Ping waiting for its Pong, if any.
    @ivar sentAt: when the outstanding (or last) Ping was sent.
    @ivar nextPingAt: when the next keep-alive Ping is due, if none is out.
    @ivar lastPongAt: when the Pong to our last Ping arrived.
    @ivar lastPingArrival: when the peer's last Ping arrived.
    """

    __slots__ = (
        "interval", "pongTimeout", "outstanding", "sentAt", "nextPingAt", "lastPongAt",
        "lastPingArrival",
    )

    def __init__(
        self, interval: float = DEFAULT_INTERVAL, pongTimeout: float = DEFAULT_PONG_TIMEOUT
    ) -> None:
        if not interval >= MIN_PING_GAP:
            raise ValueError(f"the ping interval must be at least {MIN_PING_GAP:g} s")
        if not pongTimeout > 0:
            raise ValueError("the pong timeout must be positive")
        self.interval = float(interval)
        self.pongTimeout = float(pongTimeout)
        self.outstanding: str | None = None
        self.sentAt: float | None = None
        self.nextPingAt: float | None = None
        self.lastPongAt: float | None = None
        self.lastPingArrival: float | None = None

    def start(self, now: float) -> None:
        """The handshake completed at C{now}."""
        self.nextPingAt = now + self.interval

    def nextDeadline(self) -> float | None:
        """When to act next: the Pong deadline, or the next Ping."""
        if self.outstanding is not None:
            assert self.sentAt is not None
            return self.sentAt + self.pongTimeout
        return self.nextPingAt

    def pingDue(self, now: float) -> bool:
        return self.outstanding is None and self.nextPingAt is not None and now >= self.nextPingAt

    def pongOverdue(self, now: float) -> bool:
        return (
            self.outstanding is not None
            and self.sentAt is not None
            and now >= self.sentAt + self.pongTimeout
        )

    def mayPingNow(self, now: float) -> bool:
        """
        May a Ping go now (keep-alive or on demand)?  None outstanding, and
        30 s since the Pong to the previous one.
        """
        if self.outstanding is not None:
            return False
        return self.lastPongAt is None or now >= self.lastPongAt + MIN_PING_GAP

    def pingSent(self, pingID: str, now: float) -> None:
        if not self.mayPingNow(now):
            raise ValueError("a Ping is outstanding, or the last Pong came less than 30 s ago")
        self.outstanding = pingID
        self.sentAt = now
        self.nextPingAt = None

    def pongReceived(self, pingID: str, now: float) -> bool:
        """
        A Pong arrived; C{True} if it answers the outstanding Ping (else it
        is ignored).
        """
        if pingID != self.outstanding:
            return False
        assert self.sentAt is not None
        self.outstanding = None
        self.lastPongAt = now
        self.nextPingAt = max(self.sentAt + self.interval, now + MIN_PING_GAP)
        return True

    def pingArrived(self, now: float) -> bool:
        """A Ping arrived; C{False} if it is a flood (under 30 s since the last)."""
        last = self.lastPingArrival
        self.lastPingArrival = now
        return last is None or now - last >= MIN_PING_GAP
