"""
Helpers for the Twisted-layer tests: recording application protocols and
nodes joined in memory (C{twisted.test.iosim}) on one C{task.Clock}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import StringValue
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim

from botd2.connection import Connection
from botd2.handshake import TransportKeys
from botd2.keys import PrivateKey
from botd2.protocol import BOTD2Protocol, PeerFactory, PeerProtocol

_port = iter(range(40000, 60000))


class Recorder(PeerProtocol):
    """Remembers what happened to it; handles C{StringValue}."""

    messageTypes = (StringValue,)

    def __init__(self) -> None:
        self.authenticated = 0
        self.messages: list[Message] = []
        self.unhandled: list[Any] = []
        self.lost: list[Failure] = []

    def peerAuthenticated(self) -> None:
        self.authenticated += 1

    def messageReceived(self, message: Message) -> None:
        self.messages.append(message)

    def unhandledPayload(self, payload: Any) -> None:
        self.unhandled.append(payload)

    def peerDisconnected(self, reason: Failure) -> None:
        self.lost.append(reason)

    def texts(self) -> list[str]:
        return [m.value for m in self.messages if isinstance(m, StringValue)]


def node(
    seed: int | None = None, clock: Clock | None = None, **kwargs: Any
) -> PeerFactory:
    """A node on a Clock, with the Recorder application."""
    identity = PrivateKey.from_int(seed) if seed else PrivateKey.generate()
    kwargs.setdefault("protocol", Recorder)
    # Keep each connection's session keys on it, so tests can read the wire.
    kwargs.setdefault("keyLog", rememberKeys)
    return PeerFactory(identity, clock=clock or Clock(), **kwargs)


def rememberKeys(proto: BOTD2Protocol, keys: TransportKeys) -> None:
    proto.sessionKeys = keys  # type: ignore[attr-defined]


def address(host: str = "127.0.0.1") -> IPv4Address:
    return IPv4Address("TCP", host, next(_port))


class Link:
    """An in-memory TCP connection between two protocols, pumped by iosim."""

    def __init__(
        self,
        client: BOTD2Protocol,
        server: BOTD2Protocol,
        clock: Clock,
        clientAddress: IPv4Address | None = None,
        serverAddress: IPv4Address | None = None,
        greet: bool = True,
    ) -> None:
        clientAddress = clientAddress or address()
        serverAddress = serverAddress or address()
        self.client = client
        self.server = server
        self.clientIO = iosim.FakeTransport(client, False, clientAddress, serverAddress)
        self.serverIO = iosim.FakeTransport(server, True, serverAddress, clientAddress)
        self.pump = iosim.connect(
            server, self.serverIO, client, self.clientIO, greet=greet, clock=clock
        )

    def flush(self) -> None:
        self.pump.flush()


def dial(
    client: PeerFactory,
    server: PeerFactory,
    clientAddress: IPv4Address | None = None,
    greet: bool = True,
    initiator: Connection | None = None,
) -> Link:
    """
    Connect C{client} to C{server} in memory, as C{client.connect} would
    over TCP, and run the exchange to quiet.
    """
    clientAddress = clientAddress or address()
    serverProto = server.buildProtocol(clientAddress)
    assert serverProto is not None, "refused by admission"
    if initiator is None:
        clientProto = client.buildInitiator(server.identity.public_key)
    else:
        clientProto = client.wrap(initiator)
    clock = client.clock
    assert isinstance(clock, Clock)
    return Link(clientProto, serverProto, clock, clientAddress, greet=greet)


def app(proto: BOTD2Protocol) -> Recorder:
    assert isinstance(proto.app, Recorder)
    return proto.app


def ids(*values: str) -> Callable[[], str]:
    """An id source that gives C{values}, then fails loudly."""
    it = iter(values)

    def next_id() -> str:
        try:
            return next(it)
        except StopIteration:
            raise AssertionError("more ids asked for than the test injected") from None

    return next_id
