"""Keys, node IDs and peer addresses (WIRE.md section 1)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from botd2._secp256k1 import N, P
from botd2.keys import (
    DEFAULT_PORT,
    InvalidAddress,
    InvalidKey,
    PeerAddress,
    PrivateKey,
    PublicKey,
)

KEY = PrivateKey.from_int(12345).public_key
NODE = KEY.node_id


class PublicKeyTests(SynchronousTestCase):
    def test_node_id_round_trip(self) -> None:
        self.assertEqual(len(NODE), 66)
        self.assertEqual(NODE, NODE.lower())
        self.assertEqual(PublicKey.from_node_id(NODE), KEY)
        self.assertEqual(PublicKey.from_node_id(NODE.upper()), KEY)

    def test_bad_node_ids(self) -> None:
        for text in ("", NODE[:-2], NODE + "00", "zz" + NODE[2:], "04" + NODE[2:],
                     "02" + "f" * 64):
            self.assertRaises(InvalidKey, PublicKey.from_node_id, text)

    def test_x_at_or_above_p(self) -> None:
        """X >= p is rejected, even where X - p is a valid x."""
        for x in (P, P + 1, 2**256 - 1):
            for prefix in (b"\x02", b"\x03"):
                self.assertRaises(InvalidKey, PublicKey, prefix + x.to_bytes(32, "big"))

    def test_equality_and_hash(self) -> None:
        other = PublicKey(bytes(KEY))
        self.assertEqual(other, KEY)
        self.assertEqual(hash(other), hash(KEY))
        self.assertNotEqual(KEY, PrivateKey.from_int(2).public_key)
        self.assertNotEqual(KEY, bytes(KEY))

    def test_private_key_range(self) -> None:
        for value in (0, N, N + 1):
            self.assertRaises(InvalidKey, PrivateKey.from_int, value)
        self.assertRaises(InvalidKey, PrivateKey, b"\x01" * 31)
        self.assertEqual(PrivateKey.from_int(N - 1).secret_bytes(), (N - 1).to_bytes(32, "big"))

    def test_repr_hides_secret(self) -> None:
        k = PrivateKey.from_int(0xDEADBEEF)
        self.assertNotIn("deadbeef", repr(k))
        self.assertIn(k.public_key.node_id, repr(k))

    def test_generate_is_random(self) -> None:
        self.assertNotEqual(PrivateKey.generate().public_key, PrivateKey.generate().public_key)


class PeerAddressTests(SynchronousTestCase):
    def test_valid(self) -> None:
        for text, host, port in (
            (f"{NODE}@example.com", "example.com", DEFAULT_PORT),
            (f"{NODE}@example.com:1", "example.com", 1),
            (f"{NODE}@a-b.example.com.:65535", "a-b.example.com.", 65535),
            (f"{NODE}@localhost", "localhost", DEFAULT_PORT),
            (f"{NODE}@127.0.0.1", "127.0.0.1", DEFAULT_PORT),
            (f"{NODE}@10.0.0.2:9000", "10.0.0.2", 9000),
            (f"{NODE}@[::1]", "::1", DEFAULT_PORT),
            (f"{NODE}@[::1]:9946", "::1", 9946),
            (f"{NODE}@[2001:db8::1]:80", "2001:db8::1", 80),
            (f"{NODE.upper()}@host", "host", DEFAULT_PORT),
        ):
            address = PeerAddress.parse(text)
            self.assertEqual((address.node, address.host, address.port), (KEY, host, port), text)

    def test_str_round_trip(self) -> None:
        for text in (f"{NODE}@example.com:9945", f"{NODE}@[::1]:7", f"{NODE}@1.2.3.4:5"):
            self.assertEqual(str(PeerAddress.parse(text)), text)
            self.assertEqual(PeerAddress.parse(str(PeerAddress.parse(text))),
                             PeerAddress.parse(text))

    def test_default_port_argument(self) -> None:
        self.assertEqual(PeerAddress.parse(f"{NODE}@h", default_port=1).port, 1)

    def test_invalid(self) -> None:
        for text, words in (
            ("example.com:9945", "NODEID@HOST"),
            (f"{NODE}@", "host is missing"),
            (f"{NODE}@:9945", "host is missing"),
            (f"{NODE[:-1]}@host", "66 hex"),
            (f"{NODE}@::1", "brackets"),
            (f"{NODE}@::1:9945", "brackets"),
            (f"{NODE}@[::1", "missing ']'"),
            (f"{NODE}@[::1]9945", "after ']'"),
            (f"{NODE}@[1.2.3.4]", "not an IPv6"),
            (f"{NODE}@[nothex::]", "not an IPv6"),
            (f"{NODE}@1.2.3.256", "not a dotted IPv4"),
            (f"{NODE}@1.2.3", "not a dotted IPv4"),
            (f"{NODE}@host:0", "port"),
            (f"{NODE}@host:65536", "port"),
            (f"{NODE}@host:", "port"),
            (f"{NODE}@host:http", "port"),
            (f"{NODE}@host:\u00b2", "port"),
            (f"{NODE}@-host", "not a host name"),
            (f"{NODE}@ho st", "not a host name"),
            (f"{NODE}@{'a' * 64}.com", "not a host name"),
            (f"{NODE}@host/path", "not a host name"),
        ):
            with self.assertRaises(InvalidAddress, msg=text) as cm:
                PeerAddress.parse(text)
            message = str(cm.exception)
            self.assertIn(words, message, text)
            self.assertNotIn("\n", message)

    def test_long_input_shortened(self) -> None:
        with self.assertRaises(InvalidAddress) as cm:
            PeerAddress.parse("x" * 10_000)
        self.assertLess(len(str(cm.exception)), 200)

    def test_bad_part_shown_whole(self) -> None:
        """
        The host and port stay whole in the message, the part at fault among
        them; only the node ID is cut.
        """
        for text, shown in (
            (f"{NODE}@127.0.0.1:70000", "@127.0.0.1:70000'"),
            (f"{NODE}@{'a' * 60}.example.com:0", f"@{'a' * 60}.example.com:0'"),
            (f"{NODE}@[2001:db8::1]:99999", "@[2001:db8::1]:99999'"),
            (f"{NODE}@127.0.0.1:http", "@127.0.0.1:http'"),
        ):
            with self.assertRaises(InvalidAddress, msg=text) as cm:
                PeerAddress.parse(text)
            message = str(cm.exception)
            self.assertIn(f"'{NODE[:8]}...{shown}", message)
            self.assertIn("port", message)
            self.assertNotIn(NODE, message)

    def test_long_parts_shortened(self) -> None:
        """A huge node ID or host part still gives a message of bounded length."""
        for text in (f"{NODE}@{'h' * 10_000}", f"{'0' * 10_000}@host:1"):
            with self.assertRaises(InvalidAddress) as cm:
                PeerAddress.parse(text)
            self.assertLess(len(str(cm.exception)), 700)
