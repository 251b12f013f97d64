# -*- test-case-name: tests.test_keys -*-
"""
Identity keys, node IDs, peer addresses and signatures (WIRE.md section 1).

Pure code: no I/O but the key file functions at the end, no reactor.  Every
secp256k1 operation goes through libsecp256k1 (L{botd2._secp256k1}).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from botd2 import _secp256k1 as _c

#: The TCP port BOTD #2 listens on unless told otherwise.
DEFAULT_PORT: Final = 9945

#: Length of a public key on the wire (compressed SEC1).
PUBLIC_KEY_SIZE: Final = 33
#: Length of a signature on the wire (r || s).
SIGNATURE_SIZE: Final = 64


class InvalidKey(ValueError):
    """Bytes or text that are not a valid secp256k1 key."""


class InvalidAddress(ValueError):
    """A peer address that does not parse; the message says why."""


class BadSignature(Exception):
    """
    A signature that does not pass the checks of WIRE.md section 1.

    @ivar code: which rule failed: C{bad_signature_length},
        C{signature_out_of_range}, C{high_s} or C{bad_signature}.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class PublicKey:
    """
    A validated secp256k1 public key, known by its 33-byte compressed encoding.

    Instances are immutable, hashable and compare by encoding, so they can be
    used as dictionary keys for "one connection per peer" (WIRE.md section 7).

    @ivar _bytes: the compressed encoding.
    @ivar _point: libsecp256k1's parsed form, kept so the key is parsed once.
    """

    __slots__ = ("_bytes", "_point")

    _bytes: bytes
    _point: _c.CPublicKey

    def __init__(self, data: bytes) -> None:
        """
        Parse a compressed key strictly: 33 bytes, prefix 2 or 3, X < p and X
        the x-coordinate of a curve point.

        @raise InvalidKey: on anything else.
        """
        data = bytes(data)
        if len(data) != PUBLIC_KEY_SIZE or data[0] not in (2, 3):
            raise InvalidKey(
                f"a public key must be 33 bytes starting with 02 or 03, "
                f"got {len(data)} bytes"
                + (f" starting with {data[0]:02x}" if data else "")
            )
        point = _c.pubkey_parse(data)
        if point is None:
            raise InvalidKey("not a point on secp256k1 (X >= p or no such point)")
        self._bytes = data
        self._point = point

    @classmethod
    def _fromPoint(cls, point: _c.CPublicKey) -> PublicKey:
        self = cls.__new__(cls)
        self._point = point
        self._bytes = _c.pubkey_serialize(point)
        return self

    @classmethod
    def from_node_id(cls, node_id: str) -> PublicKey:
        """
        Parse a node ID: 66 hex characters, either case.

        @raise InvalidKey: with a message fit for a user.
        """
        text = node_id.strip()
        if len(text) != 2 * PUBLIC_KEY_SIZE or not _HEX.fullmatch(text):
            raise InvalidKey(
                f"a node ID is 66 hex characters, got {_shorten(node_id)!r}"
            )
        try:
            return cls(bytes.fromhex(text))
        except InvalidKey as e:
            raise InvalidKey(f"node ID {text.lower()} is not a valid key: {e}") from None

    @property
    def node_id(self) -> str:
        """The node ID: lowercase hex of the compressed encoding."""
        return self._bytes.hex()

    def __bytes__(self) -> bytes:
        return self._bytes

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PublicKey):
            return self._bytes == other._bytes
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __repr__(self) -> str:
        return f"<PublicKey {self.node_id}>"

    def verify(self, signature: bytes, message: bytes) -> None:
        """
        Check a 64-byte signature of C{message} (WIRE.md section 1).

        @raise BadSignature: not 64 bytes, r or s out of [1, n-1], high-S, or
            not a signature of this key.
        """
        if len(signature) != SIGNATURE_SIZE:
            raise BadSignature(
                "bad_signature_length",
                f"signature is {len(signature)} bytes, not 64",
            )
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not (0 < r < _c.N and 0 < s < _c.N):
            raise BadSignature("signature_out_of_range", "signature r or s out of range")
        if s > _c.HALF_N:
            raise BadSignature("high_s", "signature is not in low-S form")
        if not _c.verify(self._point, signature, message):
            raise BadSignature("bad_signature", "signature does not verify")


class PrivateKey:
    """
    A secp256k1 private key with its public key.

    The secret is never shown by C{repr}.
    """

    __slots__ = ("_secret", "public_key")

    _secret: bytes
    public_key: PublicKey

    def __init__(self, secret: bytes) -> None:
        """
        @param secret: 32 bytes, big-endian, in [1, n-1].
        @raise InvalidKey: otherwise.
        """
        secret = bytes(secret)
        if not _c.secret_is_valid(secret):
            raise InvalidKey("a private key is 32 bytes encoding an integer in [1, n-1]")
        self._secret = secret
        self.public_key = PublicKey._fromPoint(_c.pubkey_create(secret))

    @classmethod
    def generate(cls) -> PrivateKey:
        """A fresh random key."""
        return cls(_c.random_secret())

    @classmethod
    def from_int(cls, value: int) -> PrivateKey:
        if not 0 < value < _c.N:
            raise InvalidKey("a private key is an integer in [1, n-1]")
        return cls(value.to_bytes(32, "big"))

    def secret_bytes(self) -> bytes:
        """The 32-byte secret. Handle with care."""
        return self._secret

    def sign(self, message: bytes) -> bytes:
        """Sign: SHA-256 once, RFC 6979 nonce, low-S, 64 bytes r || s."""
        return _c.sign(self._secret, message)

    def ecdh(self, peer: PublicKey) -> bytes:
        """SHA-256 of the compressed point C{self · peer} (libsecp256k1's default)."""
        return _c.ecdh(self._secret, peer._point)

    def __repr__(self) -> str:
        return f"<PrivateKey for {self.public_key.node_id}>"


_HEX = re.compile(r"[0-9a-fA-F]+")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _shorten_address(text: str) -> str:
    """
    C{text}, a peer address, as an error message shows it: the node ID part
    cut to its first 8 characters and the host and port kept whole, so the
    part at fault shows (up to 270 characters: a valid HOST:PORT is shorter).
    """
    node, at, hostport = text.partition("@")
    if not at:
        return _shorten(text)
    return f"{_shorten(node, 8)}@{_shorten(hostport, 270)}"


@dataclass(frozen=True)
class PeerAddress:
    """
    Where a peer is and who it must be: C{NODEID@HOST[:PORT]}.

    @ivar node: the peer's static public key.
    @ivar host: a DNS name, a dotted IPv4 address, or an IPv6 address (kept
        without brackets).
    @ivar port: the TCP port.
    """

    node: PublicKey
    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.node.node_id}@{host}:{self.port}"

    @classmethod
    def parse(cls, text: str, default_port: int = DEFAULT_PORT) -> PeerAddress:
        """
        Parse C{NODEID@HOST[:PORT]} (WIRE.md section 1).

        IPv6 addresses must be in brackets, with or without a port.  Results
        are cached: a node dials the same few addresses again and again.

        @raise InvalidAddress: with one sentence saying what is wrong.
        """
        return _parse_address(text, default_port)

    @classmethod
    def _parse(cls, text: str, default_port: int) -> PeerAddress:
        shown = _shorten_address(text)
        node_text, at, hostport = text.strip().partition("@")
        if not at:
            raise InvalidAddress(f"peer address {shown!r} is not NODEID@HOST[:PORT]")
        try:
            node = PublicKey.from_node_id(node_text)
        except InvalidKey as e:
            raise InvalidAddress(f"peer address {shown!r}: {e}") from None
        host, port = _split_host_port(hostport, shown, default_port)
        return cls(node, host, port)


@functools.lru_cache(maxsize=256)
def _parse_address(text: str, default_port: int) -> PeerAddress:
    return PeerAddress._parse(text, default_port)


def _split_host_port(hostport: str, shown: str, default_port: int) -> tuple[str, int]:
    port_text: str | None = None
    if hostport.startswith("["):
        host, close, rest = hostport[1:].partition("]")
        if not close:
            raise InvalidAddress(f"peer address {shown!r}: missing ']' after IPv6 address")
        if rest:
            if not rest.startswith(":"):
                raise InvalidAddress(f"peer address {shown!r}: unexpected {rest!r} after ']'")
            port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidAddress(
                f"peer address {shown!r}: {_shorten(host, 260)!r} is not an IPv6 address"
            ) from None
    else:
        if hostport.count(":") > 1:
            raise InvalidAddress(
                f"peer address {shown!r}: an IPv6 address must be written in brackets"
            )
        host, colon, port_text_ = hostport.partition(":")
        if colon:
            port_text = port_text_
        if not host:
            raise InvalidAddress(f"peer address {shown!r}: the host is missing")
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise InvalidAddress(
                    f"peer address {shown!r}: {_shorten(host, 260)!r} is not a dotted IPv4 address"
                ) from None
        else:
            name = host[:-1] if host.endswith(".") else host
            if len(name) > 253 or not all(
                _DNS_LABEL.fullmatch(label) for label in name.split(".")
            ):
                raise InvalidAddress(
                    f"peer address {shown!r}: {_shorten(host, 260)!r} is not a host name"
                )
    if port_text is None:
        return host, default_port
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 < int(port_text) < 65536:
        raise InvalidAddress(
            f"peer address {shown!r}: the port must be a number from 1 to 65535"
        )
    return host, int(port_text)
