"""
What the server and client processes of L{bench.compare} share.

The three transports carry the same protobuf C{Envelope}s: an application
message is a C{google.protobuf.wrappers_pb2.BytesValue} packed in C{Any} as
C{Envelope.payload}; a protocol ping is C{Envelope.ping} answered by
C{Envelope.pong}.  botd2 frames them itself; the baselines frame them with
C{Int32StringReceiver} (a 4-byte big-endian length prefix, as botd2's frame
header), over plain TCP or over TLS 1.3 with certificates on both sides.

The first byte of a C{BytesValue} tells the server what to do with it:
L{ECHO} (send it back), L{DATA} (count it) or L{ACK} (reply with the counts
so far, then reset them).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import resource
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import BytesValue
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, formatEventAsClassicLogText, globalLogBeginner
from twisted.protocols.basic import Int32StringReceiver

from botd2.botd2_pb2 import Envelope, Ping, Pong

TRANSPORTS: Final = ("botd2", "tcp", "tls")
#: What the processes also take: the handshake floor of L{bench.floor}.
ALL_TRANSPORTS: Final = (*TRANSPORTS, "floor")
HOST: Final = "127.0.0.1"
#: The BOTD #2 default port: never used by the benchmark.
FORBIDDEN_PORT: Final = 9945
#: The name in the server certificate, checked by the TLS client.
TLS_HOSTNAME: Final = "localhost"

ECHO: Final = b"E"
DATA: Final = b"D"
ACK: Final = b"A"
TYPE_URL: Final = "type.googleapis.com/" + BytesValue.DESCRIPTOR.full_name
#: Large enough for a 64 KiB BytesValue in an Envelope (and then some).
MAX_FRAME: Final = 2 * 1024 * 1024


def echo_message(size: int = 32) -> BytesValue:
    """A C{BytesValue} of C{size} bytes that the server echoes."""
    return BytesValue(value=ECHO + bytes(size - 1))


def data_message(size: int) -> BytesValue:
    """A C{BytesValue} of C{size} bytes that the server counts."""
    return BytesValue(value=DATA + bytes(size - 1))


def ack_request() -> BytesValue:
    return BytesValue(value=ACK)


def parse_ack(message: BytesValue) -> tuple[int, int]:
    """The server's counts in an ACK reply: messages and bytes."""
    msgs, nbytes = message.value[1:].split()
    return int(msgs), int(nbytes)


# Envelopes for the baselines (what botd2 does inside sendMessage) -------------


def pack_envelope(message: BytesValue) -> bytes:
    """Serialize C{Envelope(payload=Any(message))}, as botd2's C{send_payload}."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return Envelope(payload=packed).SerializeToString()  # type: ignore[no-any-return]


def ping_envelope() -> bytes:
    return Envelope(ping=Ping(id=str(uuid.uuid4()))).SerializeToString()  # type: ignore[no-any-return]


def pong_envelope(ping_id: str) -> bytes:
    pong = Pong(id=str(uuid.uuid4()), ping_id=ping_id)
    return Envelope(pong=pong).SerializeToString()  # type: ignore[no-any-return]


class ServerLogic:
    """
    The server side of every figure, whatever the transport: echo, count,
    acknowledge.  The class it is mixed into provides C{sendMessage}.
    """

    msgs = 0
    nbytes = 0
    sendMessage: Callable[[BytesValue], None]

    def handle(self, message: BytesValue) -> None:
        value = message.value
        op = value[:1]
        if op == DATA:
            self.msgs += 1
            self.nbytes += len(value)
        elif op == ECHO:
            self.sendMessage(message)
        elif op == ACK:
            self.sendMessage(BytesValue(value=ACK + f"{self.msgs} {self.nbytes}".encode()))
            self.msgs = self.nbytes = 0


class TrackedServer(ServerLogic):
    """
    A baseline server connection (plain, TLS or the floor) in its factory's
    C{live} set while open; C{seen} once it carried an application message.
    """

    factory: Any
    seen = False

    def connectionMade(self) -> None:
        self.factory.live.add(self)

    def connectionLost(self, reason: object = None) -> None:
        self.factory.live.discard(self)

    def handle(self, message: BytesValue) -> None:
        self.seen = True
        ServerLogic.handle(self, message)


class ClientLogic:
    """
    The client side: one reply awaited at a time (L{request}).  The class it
    is mixed into provides C{sendMessage}.
    """

    _waiter: Deferred[BytesValue] | None = None
    sendMessage: Callable[[BytesValue], None]

    def handle(self, message: BytesValue) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(message)

    def request(self, message: BytesValue) -> Deferred[BytesValue]:
        """Send C{message}; fires with the next message from the server."""
        d: Deferred[BytesValue] = Deferred()
        self._waiter = d
        self.sendMessage(message)
        return d


class EnvelopeReceiver(Int32StringReceiver):
    """
    Envelopes over C{Int32StringReceiver}: what a plain Twisted application
    carrying the same messages would do.  Subclasses mix in L{ServerLogic} or
    L{ClientLogic} for C{handle}.
    """

    MAX_LENGTH = MAX_FRAME
    _pongWaiter: Deferred[None] | None = None
    handle: Callable[[BytesValue], None]

    def sendMessage(self, message: BytesValue) -> None:
        self.sendString(pack_envelope(message))

    def stringReceived(self, data: bytes) -> None:
        envelope = Envelope.FromString(data)
        kind = envelope.WhichOneof("body")
        if kind == "payload":
            payload = envelope.payload
            if payload.type_url == TYPE_URL:
                self.handle(BytesValue.FromString(payload.value))
        elif kind == "ping":
            self.sendString(pong_envelope(envelope.ping.id))
        elif kind == "pong":
            waiter, self._pongWaiter = self._pongWaiter, None
            if waiter is not None:
                waiter.callback(None)

    def ping(self) -> Deferred[None]:
        """Send an C{Envelope.ping}; fires when its C{pong} arrives."""
        d: Deferred[None] = Deferred()
        self._pongWaiter = d
        self.sendString(ping_envelope())
        return d


# Process plumbing ---------------------------------------------------------------


def raise_fd_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of a process, in KiB, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def collect_and_measure() -> int:
    """C{gc.collect()}, then our RSS in KiB."""
    gc.collect()
    gc.collect()
    return rss_kib()


def quiet_logging() -> None:
    """
    Start Twisted logging with an observer that drops everything below
    C{warn} (without it, Twisted would buffer the first 65,536 events in
    memory, which would count in the RSS figure) and prints the rest.
    """

    # A set of the loud levels: LogLevel's own comparisons sort its constants on
    # every call, which the harness would charge to botd2, the only transport
    # that logs (one event per connection and side).
    loud = frozenset((LogLevel.warn, LogLevel.error, LogLevel.critical))

    def observer(event: dict[str, Any]) -> None:
        if "log_failure" in event or event.get("log_level") in loud:
            text = formatEventAsClassicLogText(event)
            if text:
                sys.stderr.write(text)

    globalLogBeginner.beginLoggingTo([observer], discardBuffer=True, redirectStandardIO=False)


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout, for the harness."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def die_with_parent() -> None:
    """Linux: get SIGKILL when the harness dies (a C{preexec_fn})."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except Exception:  # pragma: no cover - best effort
        pass


# TLS: a CA, a server certificate and a client certificate, ECDSA P-256 --------------


def make_certificates(directory: Path) -> None:
    """Write ca.pem, server.pem and client.pem (certificate + key) into C{directory}."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def build(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: Any
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
        )

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def pem_cert(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        build("botd2 bench CA", ca_key, "botd2 bench CA", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(pem_cert(ca))

    import ipaddress

    for role, eku in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            build(f"botd2 bench {role}", key, "botd2 bench CA", ca_key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        )
        if role == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName(TLS_HOSTNAME),
                        x509.IPAddress(ipaddress.ip_address(HOST)),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        (directory / f"{role}.pem").write_bytes(pem_cert(cert) + pem_key(key))
        os.chmod(directory / f"{role}.pem", 0o600)


def set_tls_groups(context: Any, groups: str) -> None:
    """
    Restrict the key-exchange groups of an C{OpenSSL.SSL.Context} (pyOpenSSL
    has no public call for it; C{SSL_CTX_set1_groups_list} is the same
    function as C{SSL_CTX_set1_curves_list}).  C{"default"} keeps OpenSSL's.
    """
    if groups == "default":
        return
    from OpenSSL._util import lib

    if lib.SSL_CTX_set1_curves_list(context._context, groups.encode("ascii")) != 1:
        raise ValueError(f"OpenSSL refused the TLS groups {groups!r}")


def tls_server_options(certs: Path, groups: str) -> Any:
    """
    TLS 1.3 only, our certificate, and a client certificate required and
    verified against the CA.
    """
    from twisted.internet import ssl

    ca = ssl.Certificate.loadPEM((certs / "ca.pem").read_bytes())
    mine = ssl.PrivateCertificate.loadPEM((certs / "server.pem").read_bytes())
    options = ssl.CertificateOptions(
        privateKey=mine.privateKey.original,
        certificate=mine.original,
        trustRoot=ca,  # implies verify=True and requireCertificate=True
        raiseMinimumTo=ssl.TLSVersion.TLSv1_3,
    )
    set_tls_groups(options.getContext(), groups)  # the context is made once, then cached
    return options


def tls_client_creator(certs: Path, groups: str) -> Any:
    """
    C{optionsForClientTLS}: TLS 1.3 only, the server verified against the CA
    (its name checked), our client certificate offered.
    """
    from twisted.internet import ssl

    ca = ssl.Certificate.loadPEM((certs / "ca.pem").read_bytes())
    mine = ssl.PrivateCertificate.loadPEM((certs / "client.pem").read_bytes())
    creator = ssl.optionsForClientTLS(
        TLS_HOSTNAME,
        trustRoot=ca,
        clientCertificate=mine,
        extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_3},
    )
    # The CertificateOptions behind the creator makes every connection from
    # its one cached context: restrict the groups there.
    set_tls_groups(creator._createConnection.__self__.getContext(), groups)
    return creator


def add_common_arguments(parser: Any) -> None:
    """The options that the server and the client processes share."""
    parser.add_argument("--transport", choices=ALL_TRANSPORTS, required=True)
    parser.add_argument("--certs", type=Path, help="directory with ca/server/client.pem")
    parser.add_argument("--tls-groups", default="X25519")
    parser.add_argument("--cprofile", type=Path, help="write a cProfile of the reactor run here")


def run_profiled(path: Path | None, run: Callable[[], None]) -> None:
    """
    C{run()}, under cProfile when C{path} is given (stats dumped there).  The
    timer is the process's CPU time: on a busy machine, time spent waiting for
    a CPU is not charged to whatever function was running.
    """
    if path is None:
        run()
        return
    import cProfile
    import time

    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        run()
    finally:
        profiler.disable()
        profiler.dump_stats(str(path))
