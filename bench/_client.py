"""
The client process of L{bench.compare}: runs one figure against one server
process and prints the result as one JSON line on stdout.

Figures (C{--figure}):

  - C{connect}: C{--loops} concurrent loops of connect + handshake + one
    echoed message + close (waiting until the connection is gone), for
    C{--seconds} after C{--warmup} seconds; connections per second;
  - C{bulk} / C{small}: C{--count} messages of C{--size} bytes pushed by a
    streaming producer registered on the transport (so TCP's backpressure
    pauses it), then one ACK request; from the first send to the ACK's
    reply; MB/s and messages/s;
  - C{rtt}: C{--count} echoes of a 32-byte message, one at a time, after
    100 for warm-up; the median in µs; then one protocol Ping/Pong;
  - C{hold}: open C{--count} connections (32 at a time), each with one echo,
    print C{{"ready": n}} and keep them until killed (the RSS figure);
  - C{probe}: one connection; what TLS negotiated (version, cipher, group).

botd2 keeps one connection per peer key (WIRE.md section 7), so every
concurrent loop, and every held connection, has its own identity (its own
C{PeerFactory}); the connect loops close and wait for C{whenLost()} before
dialling again.  All three transports dial 127.0.0.1 with
C{TCP4ClientEndpoint}, the endpoint botd2's C{PeerFactory.connect} picks
for an IPv4 literal (it keeps C{HostnameEndpoint} for names).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from time import perf_counter
from typing import Any

from google.protobuf.wrappers_pb2 import BytesValue
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from bench._common import (
    HOST,
    ClientLogic,
    EnvelopeReceiver,
    ack_request,
    add_common_arguments,
    data_message,
    echo_message,
    emit,
    parse_ack,
    quiet_logging,
    raise_fd_limit,
    run_profiled,
    tls_client_creator,
)
from botd2.keys import PrivateKey
from botd2.protocol import PeerFactory, PeerProtocol

# One connection, whatever the transport ------------------------------------------


class BotdClientPeer(ClientLogic, PeerProtocol):
    messageTypes = (BytesValue,)

    def messageReceived(self, message: Any) -> None:
        self.handle(message)


class FrameClient(ClientLogic, EnvelopeReceiver):
    """The baseline client protocol; C{lost} fires when the connection is gone."""

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


class Conn:
    """A connected client, any transport."""

    def request(self, message: BytesValue) -> Deferred[BytesValue]:
        raise NotImplementedError

    def send(self, message: BytesValue) -> None:
        raise NotImplementedError

    @property
    def consumer(self) -> Any:
        """Where to register a streaming producer."""
        raise NotImplementedError

    def close(self) -> Deferred[Any]:
        """Close; fires once the connection is gone."""
        raise NotImplementedError

    def ping(self) -> Deferred[Any]:
        """A protocol-level Ping; fires on its Pong."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        return {}


class BotdConn(Conn):
    def __init__(self, app: BotdClientPeer) -> None:
        self.app = app

    def request(self, message: BytesValue) -> Deferred[BytesValue]:
        return self.app.request(message)

    def send(self, message: BytesValue) -> None:
        self.app.sendMessage(message)

    @property
    def consumer(self) -> Any:
        return self.app.transport

    def close(self) -> Deferred[Any]:
        transport = self.app.transport
        assert transport is not None
        lost = transport.whenLost()
        self.app.disconnect()
        return lost

    def ping(self) -> Deferred[Any]:
        return self.app.ping()

    def info(self) -> dict[str, Any]:
        return {"peer": self.app.peer.nodeID}


class FrameConn(Conn):
    def __init__(self, proto: FrameClient) -> None:
        self.proto = proto

    def request(self, message: BytesValue) -> Deferred[BytesValue]:
        return self.proto.request(message)

    def send(self, message: BytesValue) -> None:
        self.proto.sendMessage(message)

    @property
    def consumer(self) -> Any:
        return self.proto.transport

    def close(self) -> Deferred[Any]:
        self.proto.transport.loseConnection()
        return self.proto.lost

    def ping(self) -> Deferred[Any]:
        return self.proto.ping()

    def info(self) -> dict[str, Any]:
        handle = self.proto.transport.getHandle()
        if not hasattr(handle, "get_cipher_name"):
            return {}
        cert = handle.get_peer_certificate(as_cryptography=True)
        key = cert.public_key() if cert is not None else None
        curve = getattr(getattr(key, "curve", None), "name", "")
        return {
            "resumed": _session_reused(handle),
            "version": handle.get_protocol_version_name(),
            "cipher": handle.get_cipher_name(),
            "group": handle.get_group_name(),
            "server_key": f"{type(key).__name__} {curve}",
        }


def _session_reused(handle: Any) -> bool:
    """SSL_session_reused (pyOpenSSL has no call for it)."""
    from OpenSSL._util import lib

    return bool(lib.SSL_session_reused(handle._ssl))


class Connector:
    """Opens connections; C{slot} picks the identity (botd2) of a concurrent loop."""

    async def open(self, slot: int) -> Conn:
        raise NotImplementedError


class BotdConnector(Connector):
    def __init__(self, reactor: Any, port: int, node: str, bind: str | None) -> None:
        self.reactor = reactor
        self.address = f"{node}@{HOST}:{port}"
        self.bind = (bind, 0) if bind else None
        self.factories: dict[int, PeerFactory] = {}

    async def open(self, slot: int) -> Conn:
        factory = self.factories.get(slot)
        if factory is None:
            identity = PrivateKey.generate()
            factory = PeerFactory(identity, protocol=BotdClientPeer, reactor=self.reactor)
            self.factories[slot] = factory
        app = await factory.connect(self.address, bindAddress=self.bind)
        assert isinstance(app, BotdClientPeer)
        return BotdConn(app)


class FrameConnector(Connector):
    def __init__(self, reactor: Any, port: int, creator: Any, bind: str | None) -> None:
        self.reactor = reactor
        self.port = port
        self.creator = creator
        self.bind = (bind, 0) if bind else None
        self.factory = Factory.forProtocol(FrameClient)
        self.factory.noisy = False

    async def open(self, slot: int) -> Conn:
        endpoint: Any = TCP4ClientEndpoint(self.reactor, HOST, self.port, bindAddress=self.bind)
        if self.creator is not None:
            endpoint = wrapClientTLS(self.creator, endpoint)
        proto = await endpoint.connect(self.factory)
        return FrameConn(proto)


class FloorConn(Conn):
    def __init__(self, proto: Any) -> None:
        self.proto = proto

    def request(self, message: BytesValue) -> Deferred[BytesValue]:
        return self.proto.request(message)  # type: ignore[no-any-return]

    def close(self) -> Deferred[Any]:
        self.proto.transport.loseConnection()
        return self.proto.lost  # type: ignore[no-any-return]


class FloorConnector(Connector):
    """The handshake floor of L{bench.floor} (connect figures only)."""

    def __init__(self, reactor: Any, port: int, node: str, bind: str | None) -> None:
        self.reactor = reactor
        self.port = port
        self.peer = bytes.fromhex(node)
        self.bind = (bind, 0) if bind else None
        self.factories: dict[int, Any] = {}

    async def open(self, slot: int) -> Conn:
        from bench._floor import FloorClientFactory

        factory = self.factories.get(slot)
        if factory is None:
            factory = self.factories[slot] = FloorClientFactory(self.peer)
        endpoint = TCP4ClientEndpoint(self.reactor, HOST, self.port, bindAddress=self.bind)
        proto = await endpoint.connect(factory)
        return FloorConn(await proto.ready)


# A streaming producer --------------------------------------------------------------


@implementer(IPushProducer)
class Pump:
    """Sends C{count} copies of a message as fast as the consumer lets it."""

    def __init__(self, send: Callable[[BytesValue], None], message: BytesValue, count: int) -> None:
        self.send = send
        self.message = message
        self.left = count
        self.paused = False
        self.done: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        self._run()
        return self.done

    def _run(self) -> None:
        send, message = self.send, self.message
        while self.left and not self.paused:
            self.left -= 1
            send(message)
        if not self.left and not self.done.called:
            self.done.callback(None)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._run()

    def stopProducing(self) -> None:
        self.left = 0
        if not self.done.called:
            self.done.errback(Failure(ConnectionError("the consumer stopped the producer")))


# Figures ----------------------------------------------------------------------------


def _gather(coros: list[Coroutine[Any, Any, Any]]) -> Deferred[list[Any]]:
    return gatherResults([Deferred.fromCoroutine(c) for c in coros], consumeErrors=True)


def _cpu() -> float:
    """CPU seconds (user + system) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def fig_connect(connector: Connector, loops: int, seconds: float, warmup: float) -> dict:
    echo = echo_message()
    failures: list[str] = []

    async def loop(slot: int, until: float) -> int:
        n = 0
        while perf_counter() < until:
            try:
                conn = await connector.open(slot)
                reply = await conn.request(echo)
                if reply.value != echo.value:
                    raise RuntimeError("bad echo")
                await conn.close()
            except Exception as e:
                failures.append(repr(e))
                if len(failures) > 100:
                    raise
                continue
            n += 1
        return n

    start = perf_counter()
    warm = await _gather([loop(i, start + warmup) for i in range(loops)])
    t0, cpu0 = perf_counter(), _cpu()
    counts = await _gather([loop(i, t0 + seconds) for i in range(loops)])
    elapsed, cpu = perf_counter() - t0, _cpu() - cpu0
    return {
        "value": sum(counts) / elapsed,
        "unit": "conn/s",
        "n": sum(counts),
        "ops": sum(counts),
        "ops_total": sum(counts) + sum(warm),
        "cpu_s": cpu,
        "elapsed": elapsed,
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
    }


async def _stream(conn: Conn, message: BytesValue, count: int) -> float:
    """Push C{count} messages with backpressure, then ACK; seconds taken."""
    pump = Pump(conn.send, message, count)
    consumer = conn.consumer
    t0 = perf_counter()
    consumer.registerProducer(pump, True)
    await pump.start()
    consumer.unregisterProducer()
    reply = await conn.request(ack_request())
    elapsed = perf_counter() - t0
    msgs, nbytes = parse_ack(reply)
    if (msgs, nbytes) != (count, count * len(message.value)):
        raise RuntimeError(f"the server counted {msgs} messages, {nbytes} bytes; sent {count}")
    return elapsed


async def fig_stream(connector: Connector, size: int, count: int, unit: str) -> dict:
    conn = await connector.open(0)
    for _ in range(10):
        await conn.request(echo_message())
    message = data_message(size)
    warm = max(1, count // 20)
    await _stream(conn, message, warm)  # warm-up
    cpu0 = _cpu()
    elapsed = await _stream(conn, message, count)
    cpu = _cpu() - cpu0
    nbytes = count * size
    await conn.close()
    return {
        "value": nbytes / elapsed / 1e6 if unit == "MB/s" else count / elapsed,
        "unit": unit,
        "ops": count,
        "ops_total": count + warm + 12,
        "cpu_s": cpu,
        "msgs_per_s": count / elapsed,
        "mb_per_s": nbytes / elapsed / 1e6,
        "bytes": nbytes,
        "elapsed": elapsed,
    }


async def fig_rtt(connector: Connector, count: int) -> dict:
    conn = await connector.open(0)
    echo = echo_message()
    for _ in range(100):
        await conn.request(echo)
    samples = []
    cpu0 = _cpu()
    for _ in range(count):
        t0 = perf_counter()
        await conn.request(echo)
        samples.append(perf_counter() - t0)
    cpu = _cpu() - cpu0
    t0 = perf_counter()
    await conn.ping()
    ping = perf_counter() - t0
    await conn.close()
    samples.sort()
    return {
        "value": statistics.median(samples) * 1e6,
        "unit": "µs",
        "ops": count,
        "ops_total": count + 101,
        "cpu_s": cpu,
        "p10_us": samples[len(samples) // 10] * 1e6,
        "p90_us": samples[len(samples) * 9 // 10] * 1e6,
        "ping_us": ping * 1e6,
    }


async def fig_hold(connector: Connector, count: int, concurrency: int) -> dict:
    held: list[Conn] = []
    failures: list[str] = []
    echo = echo_message()
    todo = iter(range(count))

    async def worker() -> None:
        for slot in todo:
            try:
                conn = await connector.open(slot)
                await conn.request(echo)
            except Exception as e:
                failures.append(repr(e))
                continue
            held.append(conn)

    t0 = perf_counter()
    await _gather([worker() for _ in range(concurrency)])
    # Kept referenced by this process until it is killed.
    _HELD.extend(held)
    return {
        "ready": len(held),
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "elapsed": perf_counter() - t0,
    }


_HELD: list[Conn] = []


async def fig_probe(connector: Connector) -> dict:
    """Two connections one after the other: what the second negotiated."""
    for _ in range(2):
        conn = await connector.open(0)
        await conn.request(echo_message())
        info = conn.info()
        await conn.close()
    return {"value": 1, "info": info}


# Main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._client")
    add_common_arguments(parser)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--node", default="", help="the botd2 server's node ID")
    parser.add_argument(
        "--figure", choices=("connect", "bulk", "small", "rtt", "hold", "probe"), required=True
    )
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.5)
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--size", type=int, default=65536)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bind", help="source address, e.g. 127.1.0.2")
    args = parser.parse_args(argv)

    nofile = raise_fd_limit()
    quiet_logging()
    from twisted.internet import reactor

    connector: Connector
    if args.transport == "botd2":
        connector = BotdConnector(reactor, args.port, args.node, args.bind)
    elif args.transport == "floor":
        connector = FloorConnector(reactor, args.port, args.node, args.bind)
    else:
        creator = (
            tls_client_creator(Path(args.certs), args.tls_groups)
            if args.transport == "tls"
            else None
        )
        connector = FrameConnector(reactor, args.port, creator, args.bind)

    figure = args.figure
    if figure == "connect":
        work = fig_connect(connector, args.loops, args.seconds, args.warmup)
    elif figure == "bulk":
        work = fig_stream(connector, args.size, args.count, "MB/s")
    elif figure == "small":
        work = fig_stream(connector, args.size, args.count, "msg/s")
    elif figure == "rtt":
        work = fig_rtt(connector, args.count)
    elif figure == "hold":
        work = fig_hold(connector, args.count, args.concurrency)
    else:
        work = fig_probe(connector)

    status = [1]

    def done(result: dict) -> None:
        result["nofile"] = list(nofile)
        emit(result)
        status[0] = 0
        if figure != "hold":
            reactor.stop()  # type: ignore[attr-defined]

    def failed(failure: Failure) -> None:
        emit({"error": f"{failure.type.__name__}: {failure.getErrorMessage()}"})
        sys.stderr.write(failure.getTraceback())
        reactor.stop()  # type: ignore[attr-defined]

    d = Deferred.fromCoroutine(work)
    d.addCallbacks(done, failed)
    run_profiled(args.cprofile, reactor.run)  # type: ignore[attr-defined]
    return status[0]


if __name__ == "__main__":
    sys.exit(main())
