# -*- test-case-name: tests.test_node -*-
"""
An example BOTD #2 application: a peer that echoes text back.

Copy it to start your own.  Run it as a node with::

    twistd -n botd2 --port 9945 --protocol botd2.echo.EchoPeer

Every C{google.protobuf.StringValue} a peer sends comes back to it, prefixed
with C{"echo: "}.  A peer that talks to it must not echo as well, or the two
would echo each other's echoes for ever.  Any protobuf message class can be
an application message: list the ones you handle in C{messageTypes}.
"""

from __future__ import annotations

from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import StringValue
from twisted.logger import Logger
from twisted.python.failure import Failure

from botd2.protocol import MessageTooLarge, PeerProtocol


class EchoPeer(PeerProtocol):
    """Echo every text message back to the peer that sent it."""

    messageTypes = (StringValue,)
    log = Logger()

    def peerAuthenticated(self) -> None:
        # self.peer is proven by the handshake: its key, address, who dialled.
        self.log.info(
            "echo: {nodeID} joined from {host}",
            nodeID=self.peer.nodeID,
            host=getattr(self.peer.address, "host", "?"),
        )

    def messageReceived(self, message: Message) -> None:
        # Only StringValue arrives here: other types go to unhandledPayload().
        assert isinstance(message, StringValue)
        try:
            self.sendMessage(StringValue(value="echo: " + message.value))
        except MessageTooLarge:
            # The peer may send up to the maximum; our prefix would go past it.
            self.sendMessage(StringValue(value="echo: (too large to echo)"))

    def peerDisconnected(self, reason: Failure) -> None:
        self.log.info(
            "echo: {nodeID} left: {reason}", nodeID=self.peer.nodeID, reason=reason.value
        )
