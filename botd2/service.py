# -*- test-case-name: tests.test_node -*-
"""
Services for running a node: listening, and persistent outbound peers that
reconnect with backoff through C{ClientService}.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from botd2.keys import PeerAddress, PublicKey
from botd2.protocol import (
    BOTD2Protocol,
    PeerFactory,
    PeerProtocol,
    _formatAddress,
    clientEndpoint,
)

_log = Logger(namespace="botd2")


class _PeerSession(Protocol):
    """
    What C{ClientService} holds for a persistent peer: connected (with the
    L{BOTD2Protocol} as its transport) once the handshake is complete, lost
    when that connection is.

    @ivar app: the application protocol of the connection.
    """

    transport: BOTD2Protocol

    @property
    def app(self) -> Any:
        return self.transport.app


@implementer(IStreamClientEndpoint)
class _AuthenticatedEndpoint:
    """
    An endpoint whose connections are complete BOTD #2 handshakes.

    It dials only while we hold no complete connection to the peer (WIRE.md
    section 7): while one exists, inbound or outbound, the dial waits for it
    to end, so two nodes that C{--connect} to each other settle on one
    connection instead of replacing each other at every retry.

    C{ClientService} is handed a L{_PeerSession} only once the handshake is
    complete.  (Its C{prepareConnection} hook cannot be used to wait for the
    handshake: a connection lost while it waits, which is how a refused
    handshake ends, meets no transition in C{ClientService}'s state machine.)
    """

    def __init__(
        self,
        node: PeerFactory,
        peer: PublicKey,
        endpoint: IStreamClientEndpoint,
        label: str | None = None,
    ) -> None:
        self.node = node
        self.peer = peer
        self.endpoint = endpoint
        #: How the logs name this peer (C{ClientService} logs this object).
        self.label = label or peer.node_id

    def __repr__(self) -> str:
        return f"<botd2 peer {self.label}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        def dial(_: object) -> Deferred[Any]:
            return self.node.connectEndpoint(self.endpoint, self.peer)

        def authenticated(app: Any) -> IProtocol:
            assert isinstance(app, PeerProtocol)
            proto = app.transport
            assert proto is not None
            session = protocolFactory.buildProtocol(proto.getPeer())
            assert session is not None
            session.makeConnection(proto)
            proto.whenLost().addCallback(lambda why: session.connectionLost(Failure(why)))
            return session

        def failed(failure: Failure) -> Failure:
            if failure.check(CancelledError):
                return failure  # the service is stopping: nothing to report
            _log.info(
                "botd2 cannot connect to {peer}: {reason}",
                peer=self.label,
                reason=failure.getErrorMessage(),
            )
            return failure

        d: Deferred[Any] = self.node.whenPeerGone(self.peer)
        d.addCallback(dial)
        d.addCallbacks(authenticated, failed)
        return d


def persistentPeer(
    node: PeerFactory,
    address: str | PeerAddress,
    endpoint: IStreamClientEndpoint | None = None,
    maxDelay: float = 60.0,
) -> ClientService:
    """
    A service that keeps a connection to C{address}: it dials, waits for the
    handshake, and redials with jittered exponential backoff (1 s up to
    C{maxDelay}) whenever the connection ends, whoever closed it (the
    application's own C{disconnect()} included), or the attempt fails, until
    C{stopService()}.

    Start it with C{startService()}, or give it a parent service.  Each
    C{whenConnected()} fires with a session whose C{app} is the application
    protocol of the current connection.

    @param address: C{"NODEID@HOST[:PORT]"}, as L{PeerFactory.connect} takes
        it, or a L{PeerAddress}.
    @param endpoint: dial this instead of C{address}'s host and port.
    @raise botd2.keys.InvalidAddress: C{address} is a string that is no
        C{NODEID@HOST[:PORT]}.
    """
    if isinstance(address, str):
        address = PeerAddress.parse(address)
    if endpoint is None:
        endpoint = clientEndpoint(node.reactor, address, timeout=node.handshakeTimeout)
    service = ClientService(
        _AuthenticatedEndpoint(node, address.node, endpoint, str(address)),
        Factory.forProtocol(_PeerSession),
        retryPolicy=backoffPolicy(
            initialDelay=1.0, maxDelay=maxDelay, factor=1.5, jitter=random.random
        ),
        clock=node.clock,
    )
    service.setName(f"peer {address}")
    return service


class NodeService(MultiService):
    """
    A node: a listening port (already bound, see L{botd2.tap.makeService}) and
    its persistent peers.

    @ivar factory: the node's L{PeerFactory}.
    @ivar port: the listening port.
    """

    #: Where the key file was created at this start, to say so once.
    keyCreated: str | None = None
    #: How many node IDs may connect, when the node restricts it.
    allowed: int | None = None

    def __init__(self, factory: PeerFactory, port: IListeningPort) -> None:
        super().__init__()
        self.factory = factory
        self.port = port

    def startService(self) -> None:
        host = self.port.getHost()
        _log.info(
            "botd2 node {nodeID} listening on {address}",
            nodeID=self.factory.nodeID,
            address=_formatAddress(host),
            host=getattr(host, "host", None),
            port=getattr(host, "port", None),
        )
        if self.keyCreated is not None:
            _log.warn(
                "botd2 created a new identity key file {path}: this node's ID is new; "
                "keep the file (and a backup) to keep the ID",
                path=self.keyCreated,
            )
        if self.allowed:
            _log.info(
                "botd2 node accepts connections only from the {allowed} node IDs allowed",
                allowed=self.allowed,
            )
        elif self.allowed == 0:
            _log.warn("botd2 node accepts no connection: its allow list is empty")
        super().startService()

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, close every connection (with an C{Error} saying the
        node is shutting down, once authenticated), and stop the persistent
        peers; fires once all connections are gone: at most
        L{botd2.protocol.CLOSE_GRACE} seconds for a peer that does not read.
        """
        waits: list[Deferred[Any]] = [maybeDeferred(self.port.stopListening)]
        # Before the persistent peers stop, so that theirs hear why as well.
        for proto in list(self.factory.connections):
            waits.append(proto.whenLost())
            proto.disconnect("the node is shutting down")
        waits.append(maybeDeferred(super().stopService))
        return gatherResults(waits).addCallback(lambda _: None)
