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
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from botd2.keys import PeerAddress, PublicKey
from botd2.protocol import BOTD2Protocol, PeerFactory, _DialFactory, _formatAddress

_log = Logger(namespace="botd2")


@implementer(IStreamClientEndpoint)
class _DialWhenNoPeer:
    """
    An endpoint that dials only while we hold no complete connection to the
    peer (WIRE.md section 7): while one exists, inbound or outbound, the dial
    waits for it to end.  So two nodes that C{--connect} to each other settle
    on one connection instead of replacing each other at every retry.
    """

    def __init__(self, node: PeerFactory, peer: PublicKey, endpoint: IStreamClientEndpoint):
        self.node = node
        self.peer = peer
        self.endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        d = self.node.whenPeerGone(self.peer)
        d.addCallback(lambda _: self.endpoint.connect(protocolFactory))
        return d


def persistentPeer(
    node: PeerFactory,
    address: PeerAddress,
    endpoint: IStreamClientEndpoint | None = None,
    maxDelay: float = 60.0,
) -> ClientService:
    """
    A service that keeps a connection to C{address}: it dials, waits for the
    handshake (C{prepareConnection}), and redials with jittered exponential
    backoff (1 s up to C{maxDelay}) whenever the connection ends or fails.
    """
    if endpoint is None:
        endpoint = HostnameEndpoint(
            node.reactor, address.host, address.port, timeout=node.handshakeTimeout
        )

    def authenticated(proto: Any) -> Deferred[BOTD2Protocol]:
        d: Deferred[BOTD2Protocol] = proto.whenAuthenticated()
        return d

    service = ClientService(
        _DialWhenNoPeer(node, address.node, endpoint),
        _DialFactory(node, address.node, lambda proto: None),
        retryPolicy=backoffPolicy(
            initialDelay=1.0, maxDelay=maxDelay, factor=1.5, jitter=random.random
        ),
        clock=node.clock,
        prepareConnection=authenticated,
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
        super().startService()

    def stopService(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()

        def stopped(_: object) -> Deferred[None] | None:
            for proto in list(self.factory.connections):
                proto.disconnect("the node is shutting down")
            return self.port.stopListening()

        super().stopService().addBoth(stopped).chainDeferred(d)
        return d
