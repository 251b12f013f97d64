"""
Differential tests of L{botd2.keys} (libsecp256k1 through coincurve) against
the pure-Python C{ecdsa} package, an independent implementation of the same
curve (WIRE.md section 1).

Hypothesis draws private keys in [1, n-1], messages of 0..300 bytes, nonces
and bit positions; every property is checked both ways: what we make, C{ecdsa}
accepts and reproduces, and what C{ecdsa} makes, we accept or reject by the
rules of WIRE.md section 1.
"""

from __future__ import annotations

import hashlib

from ecdsa import BadSignatureError, SECP256k1, SigningKey, VerifyingKey
from ecdsa.ellipticcurve import INFINITY
from ecdsa.errors import MalformedPointError
from ecdsa.util import sigdecode_string, sigencode_string
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from botd2 import _secp256k1
from botd2.keys import BadSignature, InvalidKey, PrivateKey, PublicKey

#: The group order and field prime, taken from C{ecdsa}, not from botd2.
N: int = SECP256k1.order
P: int = SECP256k1.curve.p()
HALF_N = (N - 1) // 2

# Bounded so the whole module stays well under 30 s (ecdsa is pure Python);
# no example database, so a run leaves no files behind.
_settings = settings(max_examples=100, deadline=None, database=None)

secrets = st.integers(min_value=1, max_value=N - 1)
messages = st.binary(min_size=0, max_size=300)


def ecdsa_signing_key(d: int) -> SigningKey:
    """C{ecdsa}'s view of the private key C{d}."""
    return SigningKey.from_secret_exponent(d, curve=SECP256k1, hashfunc=hashlib.sha256)


def ecdsa_verifying_key(data: bytes) -> VerifyingKey:
    """Parse an encoded public key with C{ecdsa} (validating the point)."""
    return VerifyingKey.from_string(data, curve=SECP256k1, hashfunc=hashlib.sha256)


def ecdsa_accepts(vk: VerifyingKey, signature: bytes, message: bytes) -> bool:
    """Does C{ecdsa} verify C{signature} (64 bytes r || s) over C{message}?"""
    try:
        return bool(
            vk.verify(signature, message, hashfunc=hashlib.sha256, sigdecode=sigdecode_string)
        )
    except BadSignatureError:
        return False


def split(signature: bytes) -> tuple[int, int]:
    return int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")


def join(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def low_s(signature: bytes) -> bytes:
    """The low-S form of a signature: s := n - s when s > (n-1)/2."""
    r, s = split(signature)
    return join(r, N - s if s > HALF_N else s)


def expected_code(signature: bytes) -> str:
    """The code WIRE.md section 1 gives a 64-byte signature that does not verify."""
    r, s = split(signature)
    if not (0 < r < N and 0 < s < N):
        return "signature_out_of_range"
    if s > HALF_N:
        return "high_s"
    return "bad_signature"


class CurveTests(SynchronousTestCase):
    """Both implementations work on the same curve."""

    def test_constants(self) -> None:
        """botd2's n, (n-1)/2 and p are ecdsa's."""
        self.assertEqual(_secp256k1.N, N)
        self.assertEqual(_secp256k1.HALF_N, HALF_N)
        self.assertEqual(_secp256k1.P, P)


class SigningTests(SynchronousTestCase):
    """Our signatures against ecdsa's."""

    @_settings
    @given(d=secrets, message=messages)
    @example(d=1, message=b"")
    @example(d=N - 1, message=bytes(300))
    def test_matches_rfc6979_low_s(self, d: int, message: bytes) -> None:
        """
        Our signature is ecdsa's RFC 6979 deterministic signature (SHA-256
        hashed once) in low-S form, and ecdsa verifies it.
        """
        ours = PrivateKey.from_int(d).sign(message)
        self.assertEqual(len(ours), 64)
        sk = ecdsa_signing_key(d)
        theirs = sk.sign_deterministic(message, hashfunc=hashlib.sha256, sigencode=sigencode_string)
        self.assertEqual(ours, low_s(theirs))
        self.assertLessEqual(split(ours)[1], HALF_N)
        self.assertTrue(ecdsa_accepts(sk.get_verifying_key(), ours, message))

    @_settings
    @given(d=secrets, message=messages)
    def test_verifies_under_ecdsa_key_from_our_encoding(self, d: int, message: bytes) -> None:
        """
        ecdsa, given only our 33-byte public key and our signature, verifies
        it; and not for another message.
        """
        key = PrivateKey.from_int(d)
        signature = key.sign(message)
        vk = ecdsa_verifying_key(bytes(key.public_key))
        self.assertTrue(ecdsa_accepts(vk, signature, message))
        self.assertFalse(ecdsa_accepts(vk, signature, message + b"\x00"))


class VerifyingTests(SynchronousTestCase):
    """ecdsa's signatures against our verifier."""

    def assertRejected(self, pub: PublicKey, signature: bytes, message: bytes, code: str) -> None:
        with self.assertRaises(BadSignature) as cm:
            pub.verify(signature, message)
        self.assertEqual(cm.exception.code, code)

    @_settings
    @given(d=secrets, message=messages, k=st.integers(min_value=1, max_value=N - 1))
    @example(d=1, message=b"", k=1)
    @example(d=N - 1, message=b"x", k=N - 1)
    def test_random_nonce_signatures(self, d: int, message: bytes, k: int) -> None:
        """
        A signature ecdsa makes with an arbitrary nonce, in low-S form,
        verifies: a verifier must not require RFC 6979 nonces.  Its high-S
        twin (r, n - s), which ecdsa accepts, we reject as C{high_s}.
        """
        sk = ecdsa_signing_key(d)
        vk = sk.get_verifying_key()
        signature = low_s(
            sk.sign(message, hashfunc=hashlib.sha256, sigencode=sigencode_string, k=k)
        )
        pub = PublicKey(vk.to_string("compressed"))
        pub.verify(signature, message)
        r, s = split(signature)
        twin = join(r, N - s)
        self.assertTrue(ecdsa_accepts(vk, twin, message))
        self.assertRejected(pub, twin, message, "high_s")

    @_settings
    @given(d=secrets, message=messages)
    def test_deterministic_signatures(self, d: int, message: bytes) -> None:
        """
        ecdsa's RFC 6979 signature, in low-S form, verifies; its high-S twin
        is rejected as C{high_s}.
        """
        sk = ecdsa_signing_key(d)
        signature = low_s(
            sk.sign_deterministic(message, hashfunc=hashlib.sha256, sigencode=sigencode_string)
        )
        pub = PublicKey(sk.get_verifying_key().to_string("compressed"))
        pub.verify(signature, message)
        r, s = split(signature)
        self.assertRejected(pub, join(r, N - s), message, "high_s")

    @_settings
    @given(d=secrets, message=messages.filter(bool), data=st.data())
    def test_flipped_message_bit(self, d: int, message: bytes, data: st.DataObject) -> None:
        """A signature does not verify for a message one bit away; ecdsa agrees."""
        key = PrivateKey.from_int(d)
        signature = key.sign(message)
        bit = data.draw(st.integers(min_value=0, max_value=8 * len(message) - 1), label="bit")
        flipped = bytearray(message)
        flipped[bit // 8] ^= 0x80 >> (bit % 8)
        self.assertRejected(key.public_key, signature, bytes(flipped), "bad_signature")
        vk = ecdsa_verifying_key(bytes(key.public_key))
        self.assertFalse(ecdsa_accepts(vk, signature, bytes(flipped)))

    @_settings
    @given(d=secrets, message=messages, bit=st.integers(min_value=0, max_value=511))
    @example(d=1, message=b"", bit=0)  # top bit of r
    @example(d=1, message=b"", bit=256)  # top bit of s: high-S
    @example(d=1, message=b"", bit=511)  # bottom bit of s
    def test_flipped_signature_bit(self, d: int, message: bytes, bit: int) -> None:
        """
        A signature one bit away is rejected, with the code its r and s call
        for (out of range, high-S, or does not verify); ecdsa rejects it too.
        """
        key = PrivateKey.from_int(d)
        flipped = bytearray(key.sign(message))
        flipped[bit // 8] ^= 0x80 >> (bit % 8)
        signature = bytes(flipped)
        self.assertRejected(key.public_key, signature, message, expected_code(signature))
        vk = ecdsa_verifying_key(bytes(key.public_key))
        self.assertFalse(ecdsa_accepts(vk, signature, message))

    def test_out_of_range(self) -> None:
        """r or s equal to 0, n or above n: C{signature_out_of_range}."""
        key = PrivateKey.from_int(0xC0FFEE)
        message = b"out of range"
        r, s = split(key.sign(message))
        key.public_key.verify(join(r, s), message)
        top = 2**256 - 1
        for bad_r, bad_s in [
            (0, s),
            (r, 0),
            (0, 0),
            (N, s),
            (r, N),
            (N + 1, s),
            (r, N + 1),
            (top, s),
            (r, top),
        ]:
            self.assertRejected(
                key.public_key, join(bad_r, bad_s), message, "signature_out_of_range"
            )

    def test_bad_length(self) -> None:
        """Anything but 64 bytes: C{bad_signature_length}, however valid its prefix."""
        key = PrivateKey.from_int(0xC0FFEE)
        message = b"length"
        signature = key.sign(message)
        key.public_key.verify(signature, message)
        for bad in [
            signature[:63],
            signature + b"\x00",
            signature[:-1] + b"\x00" + signature[-1:],
            b"",
            signature + signature,
        ]:
            self.assertRejected(key.public_key, bad, message, "bad_signature_length")

    @_settings
    @given(d=secrets, message=messages, s=st.integers(min_value=1, max_value=HALF_N))
    def test_point_at_infinity(self, d: int, message: bytes, s: int) -> None:
        """
        With r = -e/d mod n, u1*G + u2*Q = s^-1 (e + r d) G is the point at
        infinity for every s: such a signature is rejected (WIRE.md section 1
        names this case).
        """
        e = int.from_bytes(hashlib.sha256(message).digest(), "big") % N
        r = (-e * pow(d, -1, N)) % N
        assume(r != 0)  # e = 0 mod n: no such signature (needs a SHA-256 preimage)
        key = PrivateKey.from_int(d)
        # The premise, by ecdsa's point arithmetic.  (ecdsa's own verify
        # raises TypeError on this signature rather than returning False.)
        w = pow(s, -1, N)
        point = ecdsa_verifying_key(bytes(key.public_key)).pubkey.point
        total = SECP256k1.generator * (e * w % N) + point * (r * w % N)
        self.assertEqual(total, INFINITY)
        self.assertRejected(key.public_key, join(r, s), message, "bad_signature")


# x-coordinates: anywhere, and in [p, 2^256) where a reducing parser would err.
x_coordinates = st.one_of(
    st.integers(min_value=0, max_value=2**256 - 1),
    st.integers(min_value=P, max_value=2**256 - 1),
    st.integers(min_value=0, max_value=2**256 - P + 20),
)


class PublicKeyTests(SynchronousTestCase):
    """Public key encodings against ecdsa's."""

    @_settings
    @given(d=secrets)
    @example(d=1)
    @example(d=N - 1)
    def test_compressed_encoding(self, d: int) -> None:
        """
        Our 33-byte key is ecdsa's compressed encoding; parsing ecdsa's gives
        an equal key, and ecdsa parses ours to the same point.
        """
        ours = PrivateKey.from_int(d).public_key
        vk = ecdsa_signing_key(d).get_verifying_key()
        compressed = vk.to_string("compressed")
        self.assertEqual(bytes(ours), compressed)
        self.assertEqual(PublicKey(compressed), ours)
        self.assertEqual(ecdsa_verifying_key(bytes(ours)).pubkey.point, vk.pubkey.point)

    @_settings
    @given(d=secrets)
    def test_other_encodings_rejected(self, d: int) -> None:
        """
        ecdsa's uncompressed, hybrid and raw encodings of a valid key are
        refused: only the compressed form is a key on the wire.
        """
        vk = ecdsa_signing_key(d).get_verifying_key()
        for encoding in ("uncompressed", "hybrid", "raw"):
            data = vk.to_string(encoding)
            self.assertEqual(ecdsa_verifying_key(data).pubkey.point, vk.pubkey.point)
            self.assertRaises(InvalidKey, PublicKey, data)
        # The compressed prefix on the wrong length, and a wrong prefix.
        compressed = vk.to_string("compressed")
        self.assertRaises(InvalidKey, PublicKey, compressed + b"\x00")
        self.assertRaises(InvalidKey, PublicKey, bytes([compressed[0] ^ 4]) + compressed[1:])

    @_settings
    @given(x=x_coordinates, odd=st.booleans())
    @example(x=1, odd=False)
    @example(x=1 + P, odd=False)
    @example(x=P, odd=False)
    def test_point_validity_agrees(self, x: int, odd: bool) -> None:
        """
        A compressed key with any 32-byte X is accepted by us exactly when
        ecdsa accepts it, never when X >= p, and re-encodes to itself.
        """
        data = bytes([3 if odd else 2]) + x.to_bytes(32, "big")
        try:
            vk = ecdsa_verifying_key(data)
        except MalformedPointError:
            vk = None
        try:
            ours: PublicKey | None = PublicKey(data)
        except InvalidKey:
            ours = None
        self.assertEqual(ours is not None, vk is not None)
        if x >= P:
            self.assertIsNone(ours)
        if ours is not None and vk is not None:
            self.assertEqual(bytes(ours), data)
            self.assertEqual(vk.to_string("compressed"), data)


class ECDHTests(SynchronousTestCase):
    """ECDH against ecdsa's point arithmetic."""

    @_settings
    @given(d=secrets, e=secrets)
    @example(d=1, e=1)
    @example(d=N - 1, e=2)
    def test_shared_secret(self, d: int, e: int) -> None:
        """
        C{PrivateKey(d).ecdh(Q)} is SHA-256 of the compressed point d*Q,
        computed by ecdsa, for Q = e*G given as ecdsa's encoding; and both
        sides get the same secret.
        """
        peer_vk = ecdsa_signing_key(e).get_verifying_key()
        shared = peer_vk.pubkey.point * d
        expected = hashlib.sha256(shared.to_bytes("compressed")).digest()
        ours = PrivateKey.from_int(d)
        peer = PrivateKey.from_int(e)
        self.assertEqual(ours.ecdh(PublicKey(peer_vk.to_string("compressed"))), expected)
        self.assertEqual(peer.ecdh(ours.public_key), expected)
