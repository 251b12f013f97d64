"""
botd2: the BOTD #2 peer protocol on Twisted.

Nodes are known by a secp256k1 public key; connections run a signed Init/Ack
handshake, then carry AES-256-GCM frames with Ping/Pong keep-alive.  The wire
format is WIRE.md; the sans-IO core is in L{botd2.keys}, L{botd2.frames},
L{botd2.handshake} and L{botd2.connection}.
"""

from botd2._version import __version__
from botd2.keys import DEFAULT_PORT, PeerAddress, PrivateKey, PublicKey

__all__ = ["__version__", "DEFAULT_PORT", "PeerAddress", "PrivateKey", "PublicKey"]
