"""
The shared BOTD #2 vectors (C{../shared/vectors/botd2}), reproduced byte for
byte by the real sans-IO state machines, every intermediate value asserted.
"""

from __future__ import annotations

import hashlib
from typing import Any

import coincurve
from twisted.trial.unittest import SynchronousTestCase

from botd2.connection import (
    ConnectionFailed,
    Event,
    HandshakeComplete,
    Initiator,
    PayloadReceived,
    PingReceived,
    PongReceived,
    Responder,
    State,
)
from botd2.frames import REKEY_INFO, CipherState, hkdf_sha256, rekey
from botd2.handshake import TRANSPORT_INFO
from botd2.keys import BadSignature, InvalidKey, PrivateKey, PublicKey
from botd2.messages import parse_envelope
from tests.vectors import botd2, h


def key(entry: dict[str, Any]) -> PrivateKey:
    """A vector key, checked against its stated public key."""
    k = PrivateKey(h(entry["private"]))
    assert bytes(k.public_key).hex() == entry["public"], entry.get("label")
    return k


class HandshakeVectorTests(SynchronousTestCase):
    """C{handshake.json}, both roles, step by step."""

    def setUp(self) -> None:
        self.v = v = botd2("handshake.json")
        self.i_s = key(v["initiator"]["static"])
        self.r_s = key(v["responder"]["static"])
        self.i_e = key(v["initiator"]["ephemeral"])
        self.r_e = key(v["responder"]["ephemeral"])

    def test_node_ids(self) -> None:
        self.assertEqual(self.i_s.public_key.node_id, self.v["initiator"]["static"]["node_id"])
        self.assertEqual(self.r_s.public_key.node_id, self.v["responder"]["static"]["node_id"])

    def test_signatures(self) -> None:
        """
        The Init and Ack signatures: message, hash, RFC 6979 nonce, low-S
        (applied for the Init, not for the Ack).
        """
        for step, signer, parts in (
            ("init", self.i_s, (self.i_s, self.r_s, self.i_e)),
            ("ack", self.r_s, (self.r_s, self.i_s, self.r_e)),
        ):
            sv = self.v[step]
            message = b"".join(bytes(k.public_key) for k in parts)
            self.assertEqual(message.hex(), sv["signed_message"])
            self.assertEqual(len(message), sv["signed_message_len"])
            self.assertEqual(hashlib.sha256(message).hexdigest(), sv["signed_message_sha256"])
            # r is the x-coordinate of k·G for the stated RFC 6979 nonce k.
            kg = coincurve.PrivateKey(h(sv["rfc6979_k"])).public_key.format(False)
            self.assertEqual(int.from_bytes(kg[1:33], "big") % coincurve_n(), int(sv["r"], 16))
            signature = signer.sign(message)
            self.assertEqual(signature.hex(), sv["signature"])
            self.assertEqual(signature[:32].hex(), sv["r"])
            s_before = int(sv["s_before_low_s"], 16)
            self.assertEqual(sv["low_s_applied"], s_before > (coincurve_n() - 1) // 2)
            expected_s = coincurve_n() - s_before if sv["low_s_applied"] else s_before
            self.assertEqual(int.from_bytes(signature[32:], "big"), expected_s)
            signer.public_key.verify(signature, message)

    def test_both_roles(self) -> None:
        """Init, Ack, key confirmation, Ping and Pong, byte for byte."""
        v = self.v
        initiator = Initiator(
            self.i_s, self.r_s.public_key, ephemeral=self.i_e, init_id=v["init"]["id"]
        )
        responder = Responder(self.r_s, ephemeral=self.r_e, ack_id=v["ack"]["id"])

        initiator.initiate()
        init_frame = initiator.data_to_send()
        self.assertEqual(init_frame.hex(), v["init"]["frame"])
        self.assertEqual(init_frame[4:].hex(), v["init"]["envelope"])
        self.assertEqual(len(init_frame) - 4, v["init"]["envelope_len"])

        self.assertEqual(responder.receive_data(init_frame), [])
        self.assertIs(responder.state, State.AWAIT_CONFIRMATION)
        ack_frame = responder.data_to_send()
        self.assertEqual(ack_frame.hex(), v["ack"]["frame"])
        self.assertEqual(len(ack_frame) - 4, v["ack"]["envelope_len"])

        events = initiator.receive_data(ack_frame)
        keys = v["keys"]
        self.assertEqual(
            events, [HandshakeComplete(self.r_s.public_key, h(keys["th"]))]
        )
        for side in (initiator, responder):
            assert side.keys is not None
            self.assertEqual(side.keys.ss.hex(), keys["ss"])
            self.assertEqual(side.keys.th.hex(), keys["th"])
            self.assertEqual(side.keys.okm.hex(), keys["okm"])
            self.assertEqual(side.keys.k_ir.hex(), keys["k_ir"])
            self.assertEqual(side.keys.k_ri.hex(), keys["k_ri"])

        confirmation, ping, pong = v["transport"]
        self.assertEqual(confirmation["step"], "key_confirmation")
        confirmation_frame = initiator.data_to_send()
        self.assertEqual(confirmation_frame.hex(), confirmation["frame"])
        self.assertEqual(len(confirmation_frame), 20)

        ping_id = ping["message"]["ping"]["id"]
        self.assertEqual(initiator.send_ping(ping_id), ping_id)
        ping_frame = initiator.data_to_send()
        self.assertEqual(ping_frame.hex(), ping["frame"])

        # The responder completes only when the confirmation decrypts.
        events = responder.receive_data(confirmation_frame + ping_frame)
        self.assertEqual(
            events,
            [HandshakeComplete(self.i_s.public_key, h(keys["th"])), PingReceived(ping_id)],
        )
        responder.send_pong(ping_id, pong["message"]["pong"]["id"])
        pong_frame = responder.data_to_send()
        self.assertEqual(pong_frame.hex(), pong["frame"])
        self.assertEqual(
            initiator.receive_data(pong_frame),
            [PongReceived(pong["message"]["pong"]["id"], ping_id)],
        )

    def test_key_schedule(self) -> None:
        """ss, th, okm from their stated inputs, independently of the state machines."""
        keys = self.v["keys"]
        shared = coincurve.PublicKey(bytes(self.r_e.public_key)).multiply(self.i_e.secret_bytes())
        self.assertEqual(shared.format().hex(), keys["shared_point"])
        self.assertEqual(hashlib.sha256(h(keys["shared_point"])).hexdigest(), keys["ss"])
        self.assertEqual(self.i_e.ecdh(self.r_e.public_key).hex(), keys["ss"])
        self.assertEqual(self.r_e.ecdh(self.i_e.public_key).hex(), keys["ss"])
        self.assertEqual(
            keys["th_input"], self.v["init"]["envelope"] + self.v["ack"]["envelope"]
        )
        self.assertEqual(hashlib.sha256(h(keys["th_input"])).hexdigest(), keys["th"])
        self.assertEqual(TRANSPORT_INFO.hex(), keys["hkdf_info_hex"])
        self.assertEqual(hkdf_sha256(h(keys["ss"]), h(keys["th"]), TRANSPORT_INFO, 64).hex(),
                         keys["okm"])

    def test_transport_frames(self) -> None:
        """Each transport frame from its key, counter, nonce, AAD and plaintext."""
        keys = self.v["keys"]
        ciphers = {"k_ir": CipherState(h(keys["k_ir"])), "k_ri": CipherState(h(keys["k_ri"]))}
        for step in self.v["transport"]:
            cipher = ciphers[step["key"]]
            self.assertEqual(cipher.counter, step["counter"])
            self.assertEqual(
                (bytes(4) + step["counter"].to_bytes(8, "big")).hex(), step["nonce"]
            )
            frame = cipher.seal_frame(h(step["plaintext_envelope"]))
            self.assertEqual(frame.hex(), step["frame"])
            self.assertEqual(frame[:4].hex(), step["aad"])
            if step["message"] is not None:
                envelope = parse_envelope(h(step["plaintext_envelope"]))
                (kind,) = step["message"]
                self.assertEqual(envelope.WhichOneof("body"), kind)


def coincurve_n() -> int:
    from botd2._secp256k1 import N

    return N


class RekeyVectorTests(SynchronousTestCase):
    """C{rekey.json}: one direction sealed up to frame 2500."""

    def test_rekey(self) -> None:
        v = botd2("rekey.json")
        self.assertEqual(REKEY_INFO.hex(), v["hkdf_info_hex"])
        for g in range(len(v["keys"]) - 1):
            self.assertEqual(rekey(h(v["keys"][g])).hex(), v["keys"][g + 1])
        expected = {entry["frame_index"]: entry for entry in v["frames"]}
        self.assertEqual(sorted(expected), [0, 1, 999, 1000, 1001, 1999, 2000, 2500])
        sender = CipherState(h(v["keys"][0]))
        receiver = CipherState(h(v["keys"][0]))
        plaintext = h(v["plaintext_envelope"])
        for index in range(max(expected) + 1):
            frame = sender.seal_frame(plaintext)
            self.assertEqual(receiver.open(frame[:4], frame[4:]), plaintext)
            if index in expected:
                entry = expected[index]
                self.assertEqual(frame.hex(), entry["frame"], index)
                self.assertEqual(sender.key.hex(), entry["key"], index)
                self.assertEqual(sender.generation, entry["key_generation"], index)
                # the counter inside that key, before this frame
                self.assertEqual(sender.counter - 1, entry["c"], index)
                self.assertEqual(entry["nonce"], (bytes(4) + entry["c"].to_bytes(8, "big")).hex())


    def test_rekey_through_connections(self) -> None:
        """
        The same frames from the sans-IO connections, whose per-frame paths
        inline the seal and the open: sent one by one, received in one read
        that crosses both rekeys, and then again after the ciphers were
        released (the path that makes them anew).
        """
        from tests.test_frame_properties import open_pair

        v = botd2("rekey.json")
        expected = {entry["frame_index"]: entry["frame"] for entry in v["frames"]}
        plaintext = h(v["plaintext_envelope"])
        ping_id = parse_envelope(plaintext).ping.id
        i, r = open_pair()
        i._send = CipherState(h(v["keys"][0]))
        r._recv = CipherState(h(v["keys"][0]))
        chunks: list[bytes] = []
        for index in range(max(expected) + 1):
            i.send_envelope_bytes(plaintext)
            (chunk,) = i.take_output()
            chunks.append(chunk)
            if index in expected:
                self.assertEqual(chunk.hex(), expected[index], index)
        events = r.receive_data(b"".join(chunks[:1500]))
        self.assertEqual(events, [PingReceived(ping_id)] * 1500)
        i.release_idle_ciphers(force=True)
        r.release_idle_ciphers(force=True)
        events = r.receive_data(b"".join(chunks[1500:]))
        self.assertEqual(events, [PingReceived(ping_id)] * (len(chunks) - 1500))
        self.assertEqual((r._recv.generation, r._recv.counter), (2, 501))
        self.assertEqual(r.state, State.OPEN)


class PrimitiveVectorTests(SynchronousTestCase):
    """C{primitives.json}."""

    def setUp(self) -> None:
        self.v = botd2("primitives.json")

    def test_ecdsa(self) -> None:
        for case in self.v["ecdsa"]:
            k = key(case)
            message = h(case["message"])
            self.assertEqual(hashlib.sha256(message).hexdigest(), case["signed_message_sha256"])
            signature = k.sign(message)
            self.assertEqual(signature.hex(), case["signature"], case["note"])
            self.assertEqual(len(signature), 64)
            k.public_key.verify(signature, message)

    def test_ecdh(self) -> None:
        for case in self.v["ecdh"]:
            k = PrivateKey(h(case["private"]))
            peer = PublicKey(h(case["peer_public"]))
            self.assertEqual(len(h(case["shared_point"])), 33)
            self.assertEqual(hashlib.sha256(h(case["shared_point"])).hexdigest(), case["ss"])
            self.assertEqual(k.ecdh(peer).hex(), case["ss"], case["note"])

    def test_public_keys(self) -> None:
        valid = invalid = 0
        for case in self.v["public_keys"]:
            data = h(case["encoding"])
            if case["valid"]:
                self.assertEqual(bytes(PublicKey(data)), data, case["note"])
                valid += 1
            else:
                self.assertRaises(InvalidKey, PublicKey, data)
                invalid += 1
        self.assertEqual((valid, invalid), (4, 12))

    def test_hkdf(self) -> None:
        for case in self.v["hkdf"]:
            okm = hkdf_sha256(h(case["ikm"]), h(case["salt"]), h(case["info"]), case["length"])
            self.assertEqual(okm.hex(), case["okm"], case["note"])
        zero = self.v["hkdf"][1]
        self.assertEqual(rekey(h(zero["ikm"])).hex(), zero["okm"])


def frame_of(case: dict[str, Any]) -> bytes:
    return h(case["prefix"] if case.get("prefix_only") else case["frame"])


class InvalidInitTests(SynchronousTestCase):
    """
    C{invalid_init.json} through the real L{Responder}: every case closes
    sending nothing; every valid variant is accepted with the stated Ack and
    transcript hash.
    """

    def setUp(self) -> None:
        self.v = botd2("invalid_init.json")
        r = self.v["responder"]
        self.assertIsNone(r["allow_list"])
        self.static = key(r["static"])
        self.ephemeral = key(r["ephemeral"])

    def responder(self) -> Responder:
        return Responder(
            self.static, ephemeral=self.ephemeral, ack_id=self.v["responder"]["ack_id"]
        )

    def test_cases_rejected(self) -> None:
        self.assertEqual(len(self.v["cases"]), 50)
        for case in self.v["cases"]:
            self.assertEqual(case["expect"], "close")
            responder = self.responder()
            events = responder.receive_data(frame_of(case))
            self.assertEqual(len(events), 1, case["name"])
            self.assertIsInstance(events[0], ConnectionFailed, case["name"])
            self.assertEqual(responder.data_to_send(), b"", case["name"])
            self.assertIs(responder.state, State.CLOSED, case["name"])
            if case["code"] in {"bad_length", "bad_pubkey", "bad_id", "parse_error",
                                "high_s", "signature_out_of_range", "bad_signature_length",
                                "self_connection", "unexpected_message"}:
                # where a case breaks one rule only, we name the same one
                self.assertEqual(events[0].code, case["code"], case["name"])

    def test_prefix_only_rejected_at_once(self) -> None:
        """A bad length is refused on the 4 length bytes alone."""
        cases = [c for c in self.v["cases"] if c.get("prefix_only")]
        self.assertEqual(len(cases), 3)
        for case in cases:
            self.assertEqual(len(frame_of(case)), 4)

    def test_valid_variants(self) -> None:
        self.assertEqual(len(self.v["valid_variants"]), 13)
        for case in self.v["valid_variants"]:
            self.assertEqual(case["expect"], "accept")
            expected = case["expected"]
            frame = h(case["frame"])
            envelope = parse_envelope(frame[4:])
            self.assertEqual(envelope.WhichOneof("body"), "init", case["name"])
            for field in ("sender_pubkey", "recipient_pubkey", "ephemeral_pubkey", "signature"):
                self.assertEqual(getattr(envelope.init, field).hex(), expected[field], case["name"])
            self.assertEqual(envelope.init.id, expected["id"], case["name"])

            responder = self.responder()
            self.assertEqual(responder.receive_data(frame), [], case["name"])
            self.assertIs(responder.state, State.AWAIT_CONFIRMATION, case["name"])
            self.assertEqual(responder.peer, PublicKey(h(expected["sender_pubkey"])))
            ack = responder.data_to_send()
            self.assertEqual(ack[4:].hex(), expected["ack_envelope"], case["name"])
            assert responder.keys is not None
            self.assertEqual(responder.keys.th.hex(), expected["th"], case["name"])


class InvalidAckTests(SynchronousTestCase):
    """
    C{invalid_ack.json} through the real L{Initiator}: every case closes
    sending nothing (no key confirmation); every valid variant is accepted.
    """

    def setUp(self) -> None:
        self.v = botd2("invalid_ack.json")
        self.static = key(self.v["initiator"]["static"])
        self.ephemeral = key(self.v["initiator"]["ephemeral"])
        self.responder = key(self.v["responder"]["static"]).public_key

    def initiator(self) -> Initiator:
        i = Initiator(
            self.static,
            self.responder,
            ephemeral=self.ephemeral,
            init_id=self.v["initiator"]["sent_init_id"],
        )
        i.initiate()
        self.assertEqual(i.data_to_send().hex(), self.v["initiator"]["sent_init_frame"])
        return i

    def test_cases_rejected(self) -> None:
        self.assertEqual(len(self.v["cases"]), 44)
        for case in self.v["cases"]:
            self.assertEqual(case["expect"], "close")
            initiator = self.initiator()
            events = initiator.receive_data(frame_of(case))
            self.assertEqual(len(events), 1, case["name"])
            self.assertIsInstance(events[0], ConnectionFailed, case["name"])
            self.assertEqual(initiator.data_to_send(), b"", case["name"])
            self.assertIs(initiator.state, State.CLOSED, case["name"])
            self.assertFalse(initiator.handshake_complete)

    def test_valid_variants(self) -> None:
        self.assertEqual(len(self.v["valid_variants"]), 11)
        for case in self.v["valid_variants"]:
            expected = case["expected"]
            initiator = self.initiator()
            events: list[Event] = initiator.receive_data(h(case["frame"]))
            self.assertIsInstance(events[0], HandshakeComplete, case["name"])
            assert initiator.keys is not None
            self.assertEqual(initiator.keys.th.hex(), expected["th"], case["name"])
            # the key confirmation, and nothing else
            self.assertEqual(len(initiator.data_to_send()), 20, case["name"])
            bodies = expected.get("transport_bodies")
            if bodies is not None:
                kinds = [
                    "payload" if isinstance(e, PayloadReceived) else type(e).__name__
                    for e in events[1:]
                ]
                # an Envelope with no body makes no event
                self.assertEqual(kinds, [b for b in bodies if b is not None], case["name"])
                self.assertEqual(bodies, [None, "payload"])


class SignatureRuleTests(SynchronousTestCase):
    """The verification rules of WIRE.md section 1 that the vectors name by code."""

    def test_codes(self) -> None:
        k = PrivateKey.generate()
        message = b"m"
        signature = k.sign(message)
        r, s = signature[:32], signature[32:]
        from botd2._secp256k1 import N

        high = (N - int.from_bytes(s, "big")).to_bytes(32, "big")
        for bad, code in (
            (signature[:63], "bad_signature_length"),
            (signature + b"\0", "bad_signature_length"),
            (bytes(32) + s, "signature_out_of_range"),
            (r + bytes(32), "signature_out_of_range"),
            (N.to_bytes(32, "big") + s, "signature_out_of_range"),
            (r + high, "high_s"),
            (r + (int.from_bytes(s, "big") ^ 1).to_bytes(32, "big"), "bad_signature"),
        ):
            with self.assertRaises(BadSignature) as cm:
                k.public_key.verify(bad, message)
            self.assertEqual(cm.exception.code, code)
