# -*- test-case-name: tests.test_keys -*-
"""
The few libsecp256k1 calls botd2 makes, through coincurve's cffi binding.

coincurve's high-level classes do more than we need on the handshake path (its
C{PrivateKey()} derives two public keys, its C{ecdh} re-parses the peer's key
on every call, its signatures are DER), so we call the library directly: the
same constant-time code, without the detours.  Every function here takes and
returns plain bytes or opaque C{secp256k1_pubkey} objects; nothing in this
module knows about the protocol.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT

_ctx = GLOBAL_CONTEXT.ctx

#: SECP256K1_EC_COMPRESSED from secp256k1.h.
_EC_COMPRESSED = (1 << 1) | (1 << 8)

#: The group order and the field prime (SEC 2, section 2.4.1).
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
P = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F
HALF_N = (N - 1) // 2

#: An opaque parsed public key (a C{secp256k1_pubkey *}).
CPublicKey = Any


def secret_is_valid(secret: bytes) -> bool:
    """Is C{secret} 32 bytes encoding an integer in [1, n-1]?"""
    return len(secret) == 32 and lib.secp256k1_ec_seckey_verify(_ctx, secret) == 1


def random_secret() -> bytes:
    """A fresh uniformly random private key from the OS CSPRNG."""
    while True:
        secret = os.urandom(32)
        if lib.secp256k1_ec_seckey_verify(_ctx, secret):
            return secret


def pubkey_create(secret: bytes) -> CPublicKey:
    """The public key of a valid secret."""
    pub = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_create(_ctx, pub, secret):
        raise ValueError("invalid private key")
    return pub


def pubkey_parse(data: bytes) -> CPublicKey | None:
    """
    Parse a SEC1 encoding; C{None} when it is not a point on the curve.

    libsecp256k1 rejects an X that is >= p rather than reducing it, and an X
    with no matching Y.  Callers check the length and prefix themselves: the
    library would also take uncompressed and hybrid encodings.
    """
    pub = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_parse(_ctx, pub, data, len(data)):
        return None
    return pub


def pubkey_serialize(pub: CPublicKey) -> bytes:
    """The 33-byte compressed SEC1 encoding."""
    out = ffi.new("unsigned char[33]")
    size = ffi.new("size_t *", 33)
    lib.secp256k1_ec_pubkey_serialize(_ctx, out, size, pub, _EC_COMPRESSED)
    return bytes(out)


def sign(secret: bytes, message: bytes) -> bytes:
    """
    ECDSA over SHA-256(message): RFC 6979 nonce, low-S, 64 bytes r || s.

    libsecp256k1's default nonce function is RFC 6979 with HMAC-SHA-256 and no
    extra data, and it always produces the low-S form.
    """
    digest = hashlib.sha256(message).digest()
    sig = ffi.new("secp256k1_ecdsa_signature *")
    if not lib.secp256k1_ecdsa_sign(_ctx, sig, digest, secret, ffi.NULL, ffi.NULL):
        raise ValueError("signing failed")
    out = ffi.new("unsigned char[64]")
    lib.secp256k1_ecdsa_signature_serialize_compact(_ctx, out, sig)
    return bytes(out)


def verify(pub: CPublicKey, signature: bytes, message: bytes) -> bool:
    """
    Does a 64-byte r || s signature verify over SHA-256(message)?

    libsecp256k1 refuses r or s >= n when parsing, r = 0 or s = 0 and high-S
    when verifying; the caller checks those first anyway, to say which.
    """
    sig = ffi.new("secp256k1_ecdsa_signature *")
    if not lib.secp256k1_ecdsa_signature_parse_compact(_ctx, sig, signature):
        return False
    digest = hashlib.sha256(message).digest()
    return bool(lib.secp256k1_ecdsa_verify(_ctx, sig, digest, pub) == 1)


def ecdh(secret: bytes, pub: CPublicKey) -> bytes:
    """libsecp256k1's default ECDH: SHA-256 of the compressed shared point."""
    out = ffi.new("unsigned char[32]")
    if not lib.secp256k1_ecdh(_ctx, out, pub, secret, ffi.NULL, ffi.NULL):
        raise ValueError("ECDH failed")
    return bytes(out)
